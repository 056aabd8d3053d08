"""Decoding of the ``hosts`` setting into one spec per shard, for both channel layers.

The accepted forms are those of channels-valkey 0.3 and channels_redis 4, so a settings file moves over
unchanged. Where those accept an entry and then fail at the first connection (a typo in an option name, a
port that is not a number, TLS options on a plain connection), decoding here raises :class:`HostConfigError`
at once, naming the entry with its passwords masked. Each spec holds ready keyword arguments for valkey-py, so
the code that opens connections never parses settings itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Iterable, Mapping, Set
from functools import lru_cache
from types import MappingProxyType
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import valkey.asyncio
import valkey.exceptions
from valkey.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from valkey.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from channels_valkey.sentinel.exceptions import HostConfigError, SentinelDiscoveryError

#: The server a layer uses when ``hosts`` is not given (or empty), as in channels-valkey 0.3.
DEFAULT_URL = "valkey://localhost:6379"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
URL_SCHEMES = ("valkey", "valkeys", "redis", "rediss", "unix")

ACCEPTED_FORMS = (
    "Each hosts entry is one of: a URL string 'valkey://[[username]:password@]host[:port][/db]' "
    "(schemes valkey, valkeys, redis, rediss, or unix:///path/to/socket?db=N); a (host, port) pair; "
    "a dict of connection options such as {'host': ..., 'port': ..., 'db': ..., 'password': ...}; "
    "{'address': URL, **options}; a Sentinel dict {'sentinels': [(host, port), ...], 'master_name': NAME, "
    "'sentinel_kwargs': {...}, **options}; or {'sentinels': [...], 'services': [NAME, ...]} for one shard "
    "per named primary (an empty list: every primary the Sentinels monitor); or, as the only entry, a Valkey "
    "Cluster {'cluster': ['valkey://node1:7000', ('node2', 7000), ...], **options}."
)

# Keyword arguments that the pools take for themselves; the rest go to the connection class.
_SERVER_POOL_KEYS = frozenset({"connection_class", "max_connections"})
_SENTINEL_POOL_KEYS = frozenset({"connection_class", "max_connections", "ssl", "check_connection"})
# Where a primary is, only the Sentinels say.
_SENTINEL_LOCATION_KEYS = ("address", "host", "port", "path", "unix_socket_path")
_SENTINEL_ENTRY_KEYS = frozenset({"sentinels", "master_name", "services", "sentinel_kwargs"})
# A cluster's nodes are listed in "cluster" and found from there; the cluster routes keys to them.
_CLUSTER_LOCATION_KEYS = ("address", "host", "port", "path", "unix_socket_path")
# Key names whose values are never shown; "pas" also catches misspellings such as "pasword".
_SECRET_KEY_PARTS = ("pas", "pwd", "secret", "token", "credential", "auth")
_DIGITS = re.compile(r"[0-9]+")
_URL_HINT = "check the port (1-65535) and percent-encode '/', ':' and '@' in the username and password."


# The specs --------------------------------------------------------------------------------------------------


def _frozen(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(options))


class _SafeRepr:
    """Specs hold passwords, so their repr is their :meth:`describe`: no log or traceback shows one."""

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


@dataclasses.dataclass(frozen=True, repr=False)
class ServerHost(_SafeRepr):
    """One server reached directly; ``options`` are the keyword arguments of its ``ConnectionPool``."""

    options: Mapping[str, Any] = dataclasses.field(hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _frozen(self.options))

    def describe(self) -> str:
        """The server as a URL for logs and errors, with any password shown as ``***``."""
        options = self.options
        auth = _auth_part(options)
        db = options.get("db", 0)
        connection_class = options.get("connection_class", Connection)
        if _is_subclass(connection_class, UnixDomainSocketConnection):
            return f"unix://{auth}{options.get('path', '')}?db={db}"
        scheme = "valkeys" if _is_subclass(connection_class, SSLConnection) else "valkey"
        address = _host_port(options.get("host", "localhost"), options.get("port", DEFAULT_PORT))
        return f"{scheme}://{auth}{address}/{db}"


@dataclasses.dataclass(frozen=True, repr=False)
class SentinelHost(_SafeRepr):
    """A primary found through Sentinels: ``sentinel_options`` reach the Sentinels, ``options`` the primary.

    ``options`` are keyword arguments for ``valkey.asyncio.sentinel.SentinelConnectionPool`` (and so for
    ``Sentinel.master_for``); ``sentinel_options`` those for the ``valkey.asyncio.Valkey`` client of each
    Sentinel (``Sentinel(sentinels, sentinel_kwargs=sentinel_options)``).
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    sentinel_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _freeze_sentinel_fields(self)

    def describe(self) -> str:
        """The primary and its Sentinels for logs and errors, without passwords."""
        sentinels = _sentinel_list(self.sentinels)
        return f"primary {self.service_name!r} of Sentinels {sentinels}{_extras(self.options)}"


@dataclasses.dataclass(frozen=True, repr=False)
class SentinelDiscovery(_SafeRepr):
    """Every primary the Sentinels monitor (``services: []``), a shard each; see :func:`discover_services`."""

    sentinels: tuple[tuple[str, int], ...]
    sentinel_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _freeze_sentinel_fields(self)

    def describe(self) -> str:
        """The Sentinels whose primaries this entry stands for, without passwords."""
        return f"every primary of Sentinels {_sentinel_list(self.sentinels)}{_extras(self.options)}"


@dataclasses.dataclass(frozen=True, repr=False)
class ClusterHost(_SafeRepr):
    """A Valkey Cluster, reached through its ``startup_nodes``; the layer sees it as one shard.

    ``options`` are the ``ConnectionPool`` keyword arguments of every node (credentials, TLS, timeouts), without
    ``host`` and ``port``: the cluster says which nodes there are (see :class:`channels_valkey.sentinel.ClusterShard`).
    """

    startup_nodes: tuple[tuple[str, int], ...]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        nodes = tuple((str(host), int(port)) for host, port in self.startup_nodes)
        object.__setattr__(self, "startup_nodes", nodes)
        object.__setattr__(self, "options", _frozen(self.options))

    def node(self, host: str, port: int) -> ServerHost:
        """The spec of one node of the cluster, with the entry's options."""
        return ServerHost({**self.options, "host": host, "port": port})

    def describe(self) -> str:
        """The cluster by its startup nodes for logs and errors, without passwords."""
        return f"cluster of {_sentinel_list(self.startup_nodes)}{_extras(self.options)}"


HostSpec: TypeAlias = ServerHost | SentinelHost | SentinelDiscovery | ClusterHost


def _freeze_sentinel_fields(spec: SentinelHost | SentinelDiscovery) -> None:
    """Normalise the Sentinel addresses and make the option mappings read-only (the specs are frozen)."""
    object.__setattr__(spec, "sentinels", tuple((str(host), int(port)) for host, port in spec.sentinels))
    object.__setattr__(spec, "sentinel_options", _frozen(spec.sentinel_options))
    object.__setattr__(spec, "options", _frozen(spec.options))


def _auth_part(options: Mapping[str, Any]) -> str:
    username = options.get("username") or ""
    password = "***" if options.get("password") else ""
    if not (username or password):
        return ""
    return f"{username}:{password}@" if password else f"{username}@"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sentinel_list(sentinels: Iterable[tuple[str, int]]) -> str:
    return ", ".join(_host_port(host, port) for host, port in sentinels)


def _extras(options: Mapping[str, Any]) -> str:
    notes = []
    if options.get("db"):
        notes.append(f"db {options['db']}")
    if options.get("username"):
        notes.append(f"user {options['username']}")
    if options.get("ssl") or _is_subclass(options.get("connection_class"), SSLConnection):
        notes.append("TLS")
    return f" ({', '.join(notes)})" if notes else ""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_subclass(value: object, cls: type) -> bool:
    return isinstance(value, type) and issubclass(value, cls)


# Decoding ---------------------------------------------------------------------------------------------------


class _EntryProblem(Exception):
    """What is wrong with one entry; :func:`decode_hosts` adds which entry it is."""


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
            f"hosts must be a list of entries, even for one server: write hosts=[{_redacted_repr(hosts)}] "
            f"instead of hosts={_redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    if isinstance(hosts, Mapping):
        if not hosts:
            return [_default_host()]
        raise HostConfigError(
            f"hosts must be a list of entries, even for one server: wrap the dict in a list, "
            f"hosts=[{_redacted_repr(hosts)}]. {ACCEPTED_FORMS}"
        )
    if isinstance(hosts, Set):
        raise HostConfigError(
            f"hosts must be a list or tuple, not a {type(hosts).__name__}: the order of the entries decides "
            "which shard every name lives on, and a set's order differs between processes. "
            f"Got {_redacted_repr(hosts)}."
        )
    if not isinstance(hosts, Iterable):
        raise HostConfigError(
            f"hosts must be a list of entries, got {_redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    entries = list(hosts)
    if not entries:
        return [_default_host()]
    if _looks_like_pair(entries):
        raise HostConfigError(
            "hosts must be a list of entries: for one (host, port) pair write "
            f"hosts=[{_redacted_repr(hosts)}], got hosts={_redacted_repr(hosts)}. {ACCEPTED_FORMS}"
        )
    specs: list[HostSpec] = []
    for index, entry in enumerate(entries):
        try:
            specs.extend(_decode_entry(entry))
        except _EntryProblem as problem:
            raise HostConfigError(
                f"hosts[{index}] = {_redacted_repr(entry)}: {problem} {ACCEPTED_FORMS}"
            ) from None
    if len(specs) > 1 and any(isinstance(spec, ClusterHost) for spec in specs):
        raise HostConfigError(
            f"a cluster entry must be the only entry of hosts (the cluster shards the keys itself), got "
            f"{len(entries)} entries: {_redacted_repr(hosts)}. List every node you want to start from in "
            "the entry's 'cluster' list."
        )
    return specs


def _default_host() -> ServerHost:
    return ServerHost(_server_options(_url_options(DEFAULT_URL)))


def _looks_like_pair(entries: list[Any]) -> bool:
    return (
        len(entries) == 2 and isinstance(entries[0], str) and "://" not in entries[0] and _is_port(entries[1])
    )


def _is_port(value: object) -> bool:
    return _as_number(value) is not None


def _as_number(value: object) -> int | None:
    """An int, or a string of digits as read from an environment variable; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


def _decode_entry(entry: object) -> list[HostSpec]:
    if isinstance(entry, str):
        return [ServerHost(_server_options(_url_options(entry)))]
    if isinstance(entry, tuple | list):
        if len(entry) != 2:
            raise _EntryProblem(f"a (host, port) pair has exactly two items, this one has {len(entry)}.")
        host, port = entry
        return [ServerHost(_server_options({"host": _host(host), "port": _port(port)}))]
    if isinstance(entry, Mapping):
        for key in entry:
            if not isinstance(key, str):
                raise _EntryProblem(f"option names must be strings, got {key!r}.")
        if "cluster" in entry:
            return [_decode_cluster_entry(entry)]
        if _SENTINEL_ENTRY_KEYS & entry.keys():
            return _decode_sentinel_entry(entry)
        if "address" in entry:
            options = dict(entry)
            address = options.pop("address")
            if not isinstance(address, str):
                raise _EntryProblem(f"'address' must be a URL string, got {type(address).__name__}.")
            # As in the peers (ConnectionPool.from_url), what the URL says wins over the other keys.
            return [ServerHost(_server_options({**options, **_url_options(address)}))]
        return [ServerHost(_server_options(entry))]
    if isinstance(entry, bytes):
        raise _EntryProblem("a URL must be a str, not bytes.")
    raise _EntryProblem(f"an entry cannot be a {type(entry).__name__}.")


def _url_options(url: str) -> dict[str, Any]:
    """Keyword arguments for a connection pool from a URL, through valkey-py's own parser."""
    scheme, separator, _ = url.partition("://")
    if not separator and url.lower().startswith("unix:"):
        scheme = "unix"
    if scheme.lower() not in URL_SCHEMES:
        shown = f"scheme {scheme!r}" if separator else "no scheme"
        raise _EntryProblem(
            f"the URL has {shown}; use one of {', '.join(s + '://' for s in URL_SCHEMES)} "
            "(e.g. 'valkey://localhost:6379/0')."
        )
    # urllib's messages can quote pieces of a password with unencoded '/' or ':', so none is passed on.
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _EntryProblem(f"the URL cannot be parsed: {_URL_HINT}") from None
    if port == 0:
        raise _EntryProblem("port 0 in the URL; a port is 1-65535.")
    if parts.scheme != "unix":
        path_db = parts.path.strip("/")
        if path_db and not _DIGITS.fullmatch(path_db):
            raise _EntryProblem(
                f"the URL path must be the database number (e.g. '/0'), nothing else; {_URL_HINT}"
            )
    try:
        options: dict[str, Any] = parse_url(url)
    except ValueError as exc:
        raise _EntryProblem(f"the URL cannot be parsed ({_redact_url(str(exc))}).") from None
    if _is_subclass(options.get("connection_class"), UnixDomainSocketConnection) and not options.get("path"):
        raise _EntryProblem("a unix URL needs the socket path, e.g. 'unix:///run/valkey/valkey.sock'.")
    return options


def _server_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments for ``ConnectionPool``: connection class chosen, host and port filled in."""
    options = dict(raw)
    connection_class = options.get("connection_class")
    if connection_class is not None and not _is_subclass(connection_class, AbstractConnection):
        raise _EntryProblem(
            f"'connection_class' must be a subclass of valkey.asyncio.connection.AbstractConnection, "
            f"got {connection_class!r}."
        )
    # The Valkey client's own spellings, which a pool does not understand, mapped to what they mean there.
    if "unix_socket_path" in options:
        clashing = [key for key in ("connection_class", "path", "ssl") if options.get(key)]
        if clashing:
            raise _EntryProblem(f"'unix_socket_path' cannot be combined with {_names(clashing)}.")
        options["path"] = options.pop("unix_socket_path")
        options["connection_class"] = connection_class = UnixDomainSocketConnection
    if "ssl" in options:
        ssl = options.pop("ssl")
        if not isinstance(ssl, bool):
            raise _EntryProblem(f"'ssl' must be True or False, got {_redacted_repr(ssl)}.")
        if ssl and connection_class is None:
            options["connection_class"] = connection_class = SSLConnection
        elif ssl and not _is_subclass(connection_class, SSLConnection):
            raise _EntryProblem(f"'ssl': True contradicts connection_class {connection_class!r}.")
    if connection_class is None:
        options["connection_class"] = connection_class = Connection
    if _is_subclass(connection_class, UnixDomainSocketConnection):
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise _EntryProblem(
                f"a unix socket connection needs 'path', the socket file, got {_redacted_repr(path)}."
            )
    elif _is_subclass(connection_class, Connection):
        options["host"] = _host(options.get("host", "localhost"))
        options["port"] = _port(options.get("port", DEFAULT_PORT))
    _check_common(options)
    _check_names(options, connection_class, _SERVER_POOL_KEYS)
    return options


def _sentinel_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments for ``SentinelConnectionPool`` (the primary's connections)."""
    options = dict(raw)
    given = [key for key in _SENTINEL_LOCATION_KEYS if key in options]
    if given:
        raise _EntryProblem(
            f"the Sentinels say where the primary is, so a Sentinel entry takes no {_names(given)}; "
            "put the Sentinels' addresses in 'sentinels'."
        )
    ssl = options.get("ssl", False)
    if not isinstance(ssl, bool):
        raise _EntryProblem(f"'ssl' must be True or False, got {_redacted_repr(ssl)}.")
    connection_class = options.get("connection_class")
    if connection_class is None:
        connection_class = SentinelManagedSSLConnection if ssl else SentinelManagedConnection
    elif not _is_subclass(connection_class, SentinelManagedConnection):
        raise _EntryProblem(
            "'connection_class' of a Sentinel entry must be a subclass of "
            f"valkey.asyncio.sentinel.SentinelManagedConnection, got {connection_class!r}."
        )
    _check_common(options)
    _check_names(options, connection_class, _SENTINEL_POOL_KEYS, excluded=("connection_pool", "host", "port"))
    return options


def _check_common(options: dict[str, Any]) -> None:
    if "db" in options:
        options["db"] = _db(options["db"])
    for key in ("username", "password"):
        value = options.get(key)
        if value is not None and not isinstance(value, str | bytes):
            raise _EntryProblem(f"{key!r} must be a string, got a {type(value).__name__}.")


def _host(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _EntryProblem(f"the host must be a non-empty string, got {_redacted_repr(value)}.")
    return value


def _port(value: object) -> int:
    port = _as_number(value)
    if port is None:
        raise _EntryProblem(f"the port must be an int, got {_redacted_repr(value)}.")
    if not 1 <= port <= 65535:
        raise _EntryProblem(f"port {port} is out of range 1-65535.")
    return port


def _db(value: object) -> int:
    db = _as_number(value)
    if db is None or db < 0:
        raise _EntryProblem(
            f"'db' must be a database number (an int of 0 or more), got {_redacted_repr(value)}."
        )
    return db


def _names(keys: Iterable[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _check_names(
    options: Mapping[str, Any],
    connection_class: type,
    pool_keys: frozenset[str],
    excluded: Iterable[str] = (),
) -> None:
    """Refuse option names that the pool or its connection class would reject at the first connection."""
    accepted = _connection_keywords(connection_class)
    if accepted is None:
        return
    accepted = (accepted | pool_keys) - frozenset(excluded)
    unknown = sorted(key for key in options if key not in accepted)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1)
        if close:
            hints.append(f"{key!r} (did you mean {close[0]!r}?)")
        elif key.startswith("ssl_") and not issubclass(connection_class, SSLConnection):
            hints.append(
                f"{key!r} (TLS options need a TLS connection: a valkeys:// or rediss:// URL, or 'ssl': True)"
            )
        else:
            hints.append(repr(key))
    raise _EntryProblem(
        f"unknown option {', '.join(hints)} for {_qualified(connection_class)}; "
        f"accepted options: {', '.join(sorted(accepted))}."
    )


@lru_cache(maxsize=32)
def _connection_keywords(connection_class: type) -> frozenset[str] | None:
    """Keyword arguments a connection class takes, following ``**kwargs`` up its bases; None if open-ended."""
    names: set[str] = set()
    for cls in connection_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            return None
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(
            parameter.name
            for parameter in parameters
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        )
        if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
            names.discard("self")
            return frozenset(names)
    return None


# Sentinel entries -------------------------------------------------------------------------------------------


def _decode_sentinel_entry(entry: Mapping[str, Any]) -> list[HostSpec]:
    options = dict(entry)
    if "sentinels" not in options:
        raise _EntryProblem("a Sentinel entry needs 'sentinels', the list of (host, port) of the Sentinels.")
    sentinels = _sentinel_addresses(options.pop("sentinels"))
    has_name, has_services = "master_name" in options, "services" in options
    if has_name == has_services:
        raise _EntryProblem(
            "a Sentinel entry takes exactly one of 'master_name' (one primary) and 'services' "
            "(a list of primaries)."
        )
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        sentinel_kwargs = {}
    if not isinstance(sentinel_kwargs, Mapping):
        raise _EntryProblem(f"'sentinel_kwargs' must be a dict, got a {type(sentinel_kwargs).__name__}.")
    _check_client_names(sentinel_kwargs)
    if has_name:
        names = [_service_name(options.pop("master_name"), "'master_name'")]
    else:
        names = _service_list(options.pop("services"))
    primary_options = _sentinel_options(options)
    if not names:
        return [SentinelDiscovery(sentinels, sentinel_kwargs, primary_options)]
    return [SentinelHost(sentinels, name, sentinel_kwargs, primary_options) for name in names]


def _sentinel_addresses(value: object) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise _EntryProblem(f"'sentinels' must be a list of (host, port) pairs, got {_redacted_repr(value)}.")
    items = list(value)
    if not items:
        raise _EntryProblem("'sentinels' is empty; list at least one Sentinel as (host, port).")
    if _looks_like_pair(items):
        raise _EntryProblem(f"'sentinels' must be a list of pairs: write [{_redacted_repr(value)}].")
    return tuple(_sentinel_address(item) for item in items)


def _sentinel_address(item: object) -> tuple[str, int]:
    if isinstance(item, tuple | list) and len(item) == 2:
        return _host(item[0]), _port(item[1])
    if isinstance(item, str) and "://" in item:
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError:
            raise _EntryProblem(
                f"Sentinel address {_redact_url(item)!r} cannot be parsed: {_URL_HINT}"
            ) from None
        simple = not (
            parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment
        )
        if parts.scheme in ("valkey", "redis") and parts.hostname and simple:
            return parts.hostname, _port(DEFAULT_SENTINEL_PORT if port is None else port)
        raise _EntryProblem(
            "a Sentinel given as a URL is 'valkey://host[:port]' and nothing more, "
            f"got {_redact_url(item)!r}; the Sentinels' credentials and TLS options go in 'sentinel_kwargs'."
        )
    raise _EntryProblem(
        f"each Sentinel is a (host, port) pair or a 'valkey://host[:port]' URL, got {_redacted_repr(item)}."
    )


def _service_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _EntryProblem(
            f"{what} must be a non-empty string naming a monitored primary, got {_redacted_repr(value)}."
        )
    return value


def _service_list(value: object) -> list[str]:
    if isinstance(value, str | bytes | Mapping | Set) or not isinstance(value, Iterable):
        raise _EntryProblem(
            f"'services' must be a list of primary names (ordered), got {_redacted_repr(value)}."
        )
    names = [_service_name(name, "each name in 'services'") for name in value]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _EntryProblem(f"'services' names {_names(repeated)} more than once; each primary is one shard.")
    return names


def _check_client_names(sentinel_kwargs: Mapping[str, Any]) -> None:
    accepted = _client_keywords()
    unknown = sorted(str(key) for key in sentinel_kwargs if key not in accepted)
    if unknown:
        raise _EntryProblem(
            f"unknown option {_names(unknown)} in 'sentinel_kwargs' (they go to valkey.asyncio.Valkey); "
            f"accepted: {', '.join(sorted(accepted))}."
        )


@lru_cache(maxsize=1)
def _client_keywords() -> frozenset[str]:
    parameters = inspect.signature(valkey.asyncio.Valkey.__init__).parameters
    return frozenset(parameters) - {"self", "connection_pool", "host", "port"}


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
        raise _EntryProblem(
            f"a cluster entry lists its nodes in 'cluster', so it takes no {_names(clashing)}."
        )
    clashing = sorted(_SENTINEL_ENTRY_KEYS & options.keys())
    if clashing:
        raise _EntryProblem(f"a cluster entry cannot be a Sentinel entry too: drop {_names(clashing)}.")
    if isinstance(nodes, str | bytes | Mapping | Set) or not isinstance(nodes, Iterable):
        raise _EntryProblem(
            "'cluster' must be a list of startup nodes, each a URL 'valkey://host:port' or a (host, port) "
            f"pair, got {_redacted_repr(nodes)}."
        )
    items = list(nodes)
    if not items:
        raise _EntryProblem("'cluster' is empty; list at least one node of the cluster.")
    if _looks_like_pair(items):
        raise _EntryProblem(f"'cluster' must be a list of nodes: write [{_redacted_repr(nodes)}].")
    addresses: list[tuple[str, int]] = []
    from_urls: dict[str, Any] | None = None
    for item in items:
        if isinstance(item, str):
            parsed = _url_options(item)
            if _is_subclass(parsed.get("connection_class"), UnixDomainSocketConnection):
                raise _EntryProblem(
                    "cluster nodes are reached over TCP; a unix socket cannot be a cluster node."
                )
            addresses.append(
                (_host(parsed.pop("host", "localhost")), _port(parsed.pop("port", DEFAULT_PORT)))
            )
            if from_urls is None:
                from_urls = parsed
            elif parsed != from_urls:
                raise _EntryProblem(
                    "the node URLs differ in scheme, credentials or database; every node of a cluster is "
                    "reached the same way, so give the options once (in the URLs alike, or as keys)."
                )
        elif isinstance(item, tuple | list) and len(item) == 2:
            addresses.append((_host(item[0]), _port(item[1])))
        else:
            raise _EntryProblem(
                f"each cluster node is a URL 'valkey://host:port' or a (host, port) pair, got {_redacted_repr(item)}."
            )
    merged = {**options, **(from_urls or {})}
    if _as_number(merged.get("db", 0)) != 0:
        raise _EntryProblem(f"a Valkey Cluster has only database 0, got db {_redacted_repr(merged['db'])}.")
    merged.pop("db", None)
    host, port = addresses[0]
    node_options = _server_options({**merged, "host": host, "port": port})
    if _is_subclass(node_options["connection_class"], UnixDomainSocketConnection):
        raise _EntryProblem("cluster nodes are reached over TCP; a unix socket cannot be a cluster node.")
    del node_options["host"], node_options["port"]
    if len(set(addresses)) != len(addresses):
        raise _EntryProblem("'cluster' lists a node more than once.")
    return ClusterHost(tuple(addresses), node_options)


# Discovery --------------------------------------------------------------------------------------------------


async def discover_services(spec: SentinelDiscovery, *, timeout: float = 5.0) -> list[SentinelHost]:
    """Ask the Sentinels which primaries they monitor: one :class:`SentinelHost` each, sorted by name.

    Sorting makes every process build the same ring from the same Sentinels. Each Sentinel is asked in turn
    until one names at least one primary; ``timeout`` bounds each connect and reply unless
    ``sentinel_options`` set their own socket timeouts. Raises :class:`SentinelDiscoveryError` when none
    answers or none monitors anything.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    client_options = {"socket_connect_timeout": timeout, "socket_timeout": timeout, **spec.sentinel_options}
    failures: list[str] = []
    for host, port in spec.sentinels:
        client = valkey.asyncio.Valkey(host=host, port=port, **client_options)
        try:
            masters = await client.sentinel_masters()
        except (valkey.exceptions.ValkeyError, OSError) as exc:
            failures.append(f"{_host_port(host, port)}: {type(exc).__name__}: {exc}")
            continue
        finally:
            await client.aclose()
        names = _monitored_names(masters)
        if names:
            return [
                SentinelHost(spec.sentinels, name, spec.sentinel_options, spec.options)
                for name in sorted(names)
            ]
        failures.append(f"{_host_port(host, port)}: monitors no primary")
    raise SentinelDiscoveryError(
        f"no Sentinel named a primary for {spec.describe()}: {'; '.join(failures)}. Check that the Sentinels "
        "run, that 'sentinel_kwargs' holds their password, and that they monitor at least one primary."
    )


def _monitored_names(masters: object) -> set[str]:
    """Primary names from a SENTINEL MASTERS reply: a dict by name (RESP2) or a list of states (RESP3)."""
    if isinstance(masters, Mapping):
        raw: Iterable[object] = masters.keys()
    elif isinstance(masters, list):
        raw = [state.get("name") for state in masters if isinstance(state, Mapping)]
    else:
        return set()
    return {name.decode() if isinstance(name, bytes) else str(name) for name in raw if name}


# Masking ----------------------------------------------------------------------------------------------------

# Greedy up to the last '@', as urllib splits the host off, so a password holding '@' is masked whole.
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@", re.DOTALL)
# "password=..." in a query string, or in any text given where a dict was due.
_ASSIGNED_SECRET = re.compile(
    rf"(?P<key>(?:^|[?&;,\s])[^=&#;,\s]*(?:{'|'.join(_SECRET_KEY_PARTS)})[^=&#;,\s]*=)[^&#;,\s]*",
    re.IGNORECASE,
)


def _redact_url(text: str) -> str:
    """``text`` with passwords replaced by ``***``: a URL's userinfo, and ``password=...`` assignments."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['head']}{user}:***@" if colon else match[0]

    return _ASSIGNED_SECRET.sub(r"\g<key>***", _URL_USERINFO.sub(userinfo, text))


def _redacted(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: "***" if _is_secret_key(key) else _redacted(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_redacted(item) for item in value)
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, Set):
        return {_redacted(item) for item in value}
    if isinstance(value, str):
        return _redact_url(value)
    if isinstance(value, bytes):
        return _redact_url(value.decode("utf-8", "replace")).encode()
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(part in key.lower() for part in _SECRET_KEY_PARTS)


def _redacted_repr(value: object, limit: int = 400) -> str:
    text = repr(_redacted(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
