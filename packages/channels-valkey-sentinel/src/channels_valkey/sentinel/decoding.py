"""Decoding of the ``hosts`` setting into one spec per shard, for both channel layers.

The accepted forms are those of channels-valkey 0.3 and channels_redis 4, so a settings file moves over
unchanged. Where those accept an entry and then fail at the first connection (a typo in an option name, a
port that is not a number, TLS options on a plain connection), decoding here raises :class:`HostConfigError`
at once, naming the entry with its passwords masked. Which form an entry has is told here; its connection
options are checked in :mod:`channels_valkey.sentinel.host_options`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Any
from urllib.parse import urlsplit

from valkey.asyncio.connection import UnixDomainSocketConnection

from channels_valkey.sentinel.exceptions import HostConfigError
from channels_valkey.sentinel.host_options import (
    URL_HINT,
    EntryProblem,
    as_number,
    check_client_names,
    checked_host,
    checked_port,
    quoted,
    sentinel_primary_options,
    server_options,
    url_options,
)
from channels_valkey.sentinel.redaction import redact_url, redacted_repr
from channels_valkey.sentinel.specs import (
    DEFAULT_PORT,
    DEFAULT_URL,
    ClusterHost,
    HostSpec,
    SentinelDiscovery,
    SentinelHost,
    ServerHost,
    is_subclass,
)

DEFAULT_SENTINEL_PORT = 26379

ACCEPTED_FORMS = (
    "Each hosts entry is one of: a URL string 'valkey://[[username]:password@]host[:port][/db]' "
    "(schemes valkey, valkeys, redis, rediss, or unix:///path/to/socket?db=N); a (host, port) pair; "
    "a dict of connection options such as {'host': ..., 'port': ..., 'db': ..., 'password': ...}; "
    "{'address': URL, **options}; a Sentinel dict {'sentinels': [(host, port), ...], 'master_name': NAME, "
    "'sentinel_kwargs': {...}, **options}; or {'sentinels': [...], 'services': [NAME, ...]} for one shard "
    "per named primary (an empty list: every primary the Sentinels monitor); or, as the only entry, a Valkey "
    "Cluster {'cluster': ['valkey://node1:7000', ('node2', 7000), ...], **options}."
)

_SENTINEL_ENTRY_KEYS = frozenset({"sentinels", "master_name", "services", "sentinel_kwargs"})
# A cluster's nodes are listed in "cluster" and found from there; the cluster routes keys to them.
_CLUSTER_LOCATION_KEYS = ("address", "host", "port", "path", "unix_socket_path")


def decode_hosts(hosts: object) -> list[HostSpec]:
    """Turn a layer's ``hosts`` setting into one spec per entry (per named service for ``services: [...]``).

    ``None`` or an empty list mean ``valkey://localhost:6379``. The order of the result is the order of the
    setting, which decides the shard of every name, so unordered collections (sets) are refused.
    """
    if hosts is None:
        return [_default_host()]
    if isinstance(hosts, str | bytes):
        if not hosts:
            return [_default_host()]
        raise HostConfigError(
            f"hosts must be a list of entries, even for one server: write hosts=[{redacted_repr(hosts)}] "
            f"instead of hosts={redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    if isinstance(hosts, Mapping):
        if not hosts:
            return [_default_host()]
        raise HostConfigError(
            f"hosts must be a list of entries, even for one server: wrap the dict in a list, "
            f"hosts=[{redacted_repr(hosts)}]. {ACCEPTED_FORMS}"
        )
    if isinstance(hosts, Set):
        raise HostConfigError(
            f"hosts must be a list or tuple, not a {type(hosts).__name__}: the order of the entries decides "
            "which shard every name lives on, and a set's order differs between processes. "
            f"Got {redacted_repr(hosts)}."
        )
    if not isinstance(hosts, Iterable):
        raise HostConfigError(
            f"hosts must be a list of entries, got {redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    entries = list(hosts)
    if not entries:
        return [_default_host()]
    if _looks_like_pair(entries):
        raise HostConfigError(
            "hosts must be a list of entries: for one (host, port) pair write "
            f"hosts=[{redacted_repr(hosts)}], got hosts={redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    specs: list[HostSpec] = []
    for index, entry in enumerate(entries):
        try:
            specs.extend(_decode_entry(entry))
        except EntryProblem as problem:
            raise HostConfigError(
                f"hosts[{index}] = {redacted_repr(entry)}: {problem} {ACCEPTED_FORMS}"
            ) from None
    if len(specs) > 1 and any(isinstance(spec, ClusterHost) for spec in specs):
        raise HostConfigError(
            f"a cluster entry must be the only entry of hosts (the cluster shards the keys itself), got "
            f"{len(entries)} entries: {redacted_repr(hosts)}. List every node you want to start from in "
            "the entry's 'cluster' list."
        )
    return specs


def _default_host() -> ServerHost:
    return ServerHost(server_options(url_options(DEFAULT_URL)))


def _looks_like_pair(entries: list[Any]) -> bool:
    return (
        len(entries) == 2 and isinstance(entries[0], str) and "://" not in entries[0] and _is_port(entries[1])
    )


def _is_port(value: object) -> bool:
    return as_number(value) is not None


def _decode_entry(entry: object) -> list[HostSpec]:
    if isinstance(entry, str):
        return [ServerHost(server_options(url_options(entry)))]
    if isinstance(entry, tuple | list):
        if len(entry) != 2:
            raise EntryProblem(f"a (host, port) pair has exactly two items, this one has {len(entry)}.")
        host, port = entry
        return [ServerHost(server_options({"host": checked_host(host), "port": checked_port(port)}))]
    if isinstance(entry, Mapping):
        for key in entry:
            if not isinstance(key, str):
                raise EntryProblem(f"option names must be strings, got {key!r}.")
        if "cluster" in entry:
            return [_decode_cluster_entry(entry)]
        if _SENTINEL_ENTRY_KEYS & entry.keys():
            return _decode_sentinel_entry(entry)
        if "address" in entry:
            options = dict(entry)
            address = options.pop("address")
            if not isinstance(address, str):
                raise EntryProblem(f"'address' must be a URL string, got {type(address).__name__}.")
            # As in the peers (ConnectionPool.from_url), what the URL says wins over the other keys.
            return [ServerHost(server_options({**options, **url_options(address)}))]
        return [ServerHost(server_options(entry))]
    if isinstance(entry, bytes):
        raise EntryProblem("a URL must be a str, not bytes.")
    raise EntryProblem(f"an entry cannot be a {type(entry).__name__}.")


# Sentinel entries -------------------------------------------------------------------------------------------


def _decode_sentinel_entry(entry: Mapping[str, Any]) -> list[HostSpec]:
    options = dict(entry)
    if "sentinels" not in options:
        raise EntryProblem("a Sentinel entry needs 'sentinels', the list of (host, port) of the Sentinels.")
    sentinels = _sentinel_addresses(options.pop("sentinels"))
    has_name, has_services = "master_name" in options, "services" in options
    if has_name == has_services:
        raise EntryProblem(
            "a Sentinel entry takes exactly one of 'master_name' (one primary) and 'services' "
            "(a list of primaries)."
        )
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        sentinel_kwargs = {}
    if not isinstance(sentinel_kwargs, Mapping):
        raise EntryProblem(f"'sentinel_kwargs' must be a dict, got a {type(sentinel_kwargs).__name__}.")
    check_client_names(sentinel_kwargs)
    if has_name:
        names = [_service_name(options.pop("master_name"), "'master_name'")]
    else:
        names = _service_list(options.pop("services"))
    primary_options = sentinel_primary_options(options)
    if not names:
        return [SentinelDiscovery(sentinels, sentinel_kwargs, primary_options)]
    return [SentinelHost(sentinels, name, sentinel_kwargs, primary_options) for name in names]


def _sentinel_addresses(value: object) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise EntryProblem(f"'sentinels' must be a list of (host, port) pairs, got {redacted_repr(value)}.")
    items = list(value)
    if not items:
        raise EntryProblem("'sentinels' is empty; list at least one Sentinel as (host, port).")
    if _looks_like_pair(items):
        raise EntryProblem(f"'sentinels' must be a list of pairs: write [{redacted_repr(value)}].")
    return tuple(_sentinel_address(item) for item in items)


def _sentinel_address(item: object) -> tuple[str, int]:
    if isinstance(item, tuple | list) and len(item) == 2:
        return checked_host(item[0]), checked_port(item[1])
    if isinstance(item, str) and "://" in item:
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError:
            raise EntryProblem(
                f"Sentinel address {redact_url(item)!r} cannot be parsed: {URL_HINT}"
            ) from None
        simple = not (
            parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment
        )
        if parts.scheme in ("valkey", "redis") and parts.hostname and simple:
            return parts.hostname, checked_port(DEFAULT_SENTINEL_PORT if port is None else port)
        raise EntryProblem(
            "a Sentinel given as a URL is 'valkey://host[:port]' and nothing more, "
            f"got {redact_url(item)!r}; the Sentinels' credentials and TLS options go in 'sentinel_kwargs'."
        )
    raise EntryProblem(
        f"each Sentinel is a (host, port) pair or a 'valkey://host[:port]' URL, got {redacted_repr(item)}."
    )


def _service_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise EntryProblem(
            f"{what} must be a non-empty string naming a monitored primary, got {redacted_repr(value)}."
        )
    return value


def _service_list(value: object) -> list[str]:
    if isinstance(value, str | bytes | Mapping | Set) or not isinstance(value, Iterable):
        raise EntryProblem(
            f"'services' must be a list of primary names (ordered), got {redacted_repr(value)}."
        )
    names = [_service_name(name, "each name in 'services'") for name in value]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EntryProblem(f"'services' names {quoted(repeated)} more than once; each primary is one shard.")
    return names


# Cluster entries --------------------------------------------------------------------------------------------


def _decode_cluster_entry(entry: Mapping[str, Any]) -> ClusterHost:
    """``{'cluster': [node, ...], **options}``: each node a URL or a (host, port) pair.

    Options may come from the URLs (scheme, username, password) or from the entry's keys; the URLs must agree
    with each other, since every node is reached the same way. Where a URL and a key both set an option, the
    URL wins, as for ``{'address': URL}``.
    """
    options = dict(entry)
    nodes = options.pop("cluster")
    clashing = [key for key in _CLUSTER_LOCATION_KEYS if key in options]
    if clashing:
        raise EntryProblem(
            f"a cluster entry lists its nodes in 'cluster', so it takes no {quoted(clashing)}."
        )
    clashing = sorted(_SENTINEL_ENTRY_KEYS & options.keys())
    if clashing:
        raise EntryProblem(f"a cluster entry cannot be a Sentinel entry too: drop {quoted(clashing)}.")
    if isinstance(nodes, str | bytes | Mapping | Set) or not isinstance(nodes, Iterable):
        raise EntryProblem(
            "'cluster' must be a list of startup nodes, each a URL 'valkey://host:port' or a (host, port) "
            f"pair, got {redacted_repr(nodes)}."
        )
    items = list(nodes)
    if not items:
        raise EntryProblem("'cluster' is empty; list at least one node of the cluster.")
    if _looks_like_pair(items):
        raise EntryProblem(f"'cluster' must be a list of nodes: write [{redacted_repr(nodes)}].")
    addresses: list[tuple[str, int]] = []
    from_urls: dict[str, Any] | None = None
    for item in items:
        if isinstance(item, str):
            parsed = url_options(item)
            if is_subclass(parsed.get("connection_class"), UnixDomainSocketConnection):
                raise EntryProblem(
                    "cluster nodes are reached over TCP; a unix socket cannot be a cluster node."
                )
            addresses.append(
                (
                    checked_host(parsed.pop("host", "localhost")),
                    checked_port(parsed.pop("port", DEFAULT_PORT)),
                )
            )
            if from_urls is None:
                from_urls = parsed
            elif parsed != from_urls:
                raise EntryProblem(
                    "the node URLs differ in scheme, credentials or database; every node of a cluster is "
                    "reached the same way, so give the options once (in the URLs alike, or as keys)."
                )
        elif isinstance(item, tuple | list) and len(item) == 2:
            addresses.append((checked_host(item[0]), checked_port(item[1])))
        else:
            raise EntryProblem(
                f"each cluster node is a URL 'valkey://host:port' or a (host, port) pair, got {redacted_repr(item)}."
            )
    merged = {**options, **(from_urls or {})}
    if as_number(merged.get("db", 0)) != 0:
        raise EntryProblem(f"a Valkey Cluster has only database 0, got db {redacted_repr(merged['db'])}.")
    merged.pop("db", None)
    host, port = addresses[0]
    node_options = server_options({**merged, "host": host, "port": port})
    if is_subclass(node_options["connection_class"], UnixDomainSocketConnection):
        raise EntryProblem("cluster nodes are reached over TCP; a unix socket cannot be a cluster node.")
    del node_options["host"], node_options["port"]
    if len(set(addresses)) != len(addresses):
        raise EntryProblem("'cluster' lists a node more than once.")
    return ClusterHost(tuple(addresses), node_options)
