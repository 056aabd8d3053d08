"""The helpers of ``channels_valkey.utils`` in channels-valkey 0.3, kept so that code importing them keeps working.

channels-valkey 0.3 (a renamed channels_redis 4) had this module for its two layers: host decoding, connection
pools, the shard hash and a hook closing a layer's connections with its event loop. Our layers no longer use it;
it is rebuilt here on ``channels_valkey.sentinel`` with the same names, call signatures and results, plus the
early, clear errors of our own host decoding. A project that wrote its own layer or tests on top of these helpers
runs unchanged.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import valkey.asyncio as avalkey
from valkey.asyncio.connection import UnixDomainSocketConnection
from valkey.asyncio.sentinel import Sentinel, SentinelConnectionPool

from channels_valkey.sentinel import (
    DEFAULT_POLICY,
    DEFAULT_URL,
    HostConfigError,
    SentinelDiscovery,
    SentinelHost,
    ServerHost,
    consistent_hash,
)
from channels_valkey.sentinel import decode_hosts as decode_host_specs

# What `from channels_valkey.utils import *` gave in 0.3: its public names (it had no __all__).
__all__ = ["create_pool", "decode_hosts"]


def _consistent_hash(value: str | bytes, ring_size: int) -> int:
    """The shard of a channel or group name among ``ring_size`` shards, as 0.3 placed it.

    Same result as 0.3 for every name and ring size; a ``ring_size`` that is not a positive int raises
    ``TypeError``/``ValueError`` here instead of failing inside the arithmetic.
    """
    return consistent_hash(value, ring_size)


def decode_hosts(hosts: Iterable[Any] | None) -> list[dict[str, Any]]:
    """A layer's ``hosts`` setting as 0.3 decoded it: one dict of connection arguments per shard.

    The dicts have 0.3's shape, which :func:`create_pool` and 0.3's callers expect: ``{"address": URL}`` for a
    URL, ``{"host": ..., "port": ...}`` for a pair, a copy of each dict entry as given, and
    ``[{"address": "valkey://localhost:6379"}]`` when ``hosts`` is empty or None. The setting is first checked
    by :func:`channels_valkey.sentinel.decode_hosts`, so a malformed entry raises
    :class:`~channels_valkey.sentinel.HostConfigError` (a ``ValueError``, as 0.3 raised for a bare string) naming
    it, instead of failing at the first connection. A Sentinel entry with ``services: [a, b]`` becomes one
    ``master_name`` dict per service, in order, the shards our layers make of it.
    """
    if isinstance(hosts, Iterator):
        hosts = list(hosts)  # read twice below: once to check, once to shape
    checked = decode_host_specs(hosts)
    if not hosts:
        return [{"address": DEFAULT_URL}]
    if any(isinstance(spec, SentinelDiscovery) for spec in checked):
        raise HostConfigError(
            "a Sentinel entry with 'services': [] stands for every primary the Sentinels monitor, which only "
            "asking them can tell; channels_valkey.utils.decode_hosts answers without connecting. List the "
            "primaries in 'services', or resolve them with channels_valkey.sentinel.discover_services()."
        )
    decoded: list[dict[str, Any]] = []
    for entry in hosts:
        if isinstance(entry, Mapping):
            decoded.extend(_entry_dicts(entry))
        elif isinstance(entry, tuple | list):
            decoded.append({"host": entry[0], "port": entry[1]})
        else:
            decoded.append({"address": entry})
    return decoded


def _entry_dicts(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict entry as given, or one ``master_name`` dict per named service of a ``services`` entry."""
    if "services" not in entry:
        return [dict(entry)]
    shared = {key: value for key, value in entry.items() if key != "services"}
    return [{**shared, "master_name": name} for name in entry["services"]]


def create_pool(host: Mapping[str, Any]) -> avalkey.ConnectionPool:
    """A valkey-py asyncio connection pool for one entry of :func:`decode_hosts`, as 0.3 made it.

    ``{"address": URL, **options}`` gives a ``ConnectionPool`` for the URL (what the URL says wins over the
    options); a dict with ``sentinels`` and ``master_name`` gives a ``SentinelConnectionPool`` for that primary,
    with ``sentinel_kwargs`` for the Sentinel connections; any other dict gives ``ConnectionPool(**host)``.
    ``host`` itself is not modified.

    Unlike 0.3's pools these have a connect timeout and TCP keepalive (``channels_valkey.sentinel``'s defaults;
    options in ``host`` override them), so a server that does not answer cannot hang a caller forever. They get
    no reply timeout: 0.3's callers send blocking commands (``BZPOPMIN`` with a block time) on these pools, which a
    reply timeout would cut short. The Sentinel pool follows a failover when it reconnects, as valkey-py's does;
    the layers' own connections (``channels_valkey.sentinel.ConnectionManager``) also follow it at once.
    """
    if not isinstance(host, Mapping):
        raise TypeError(
            f"create_pool takes one dict of connection arguments (an item of decode_hosts()), "
            f"got a {type(host).__name__}; wrap a URL as {{'address': url}}"
        )
    specs = decode_host_specs([host])
    if len(specs) != 1:
        raise HostConfigError(
            f"create_pool makes one pool, but this entry stands for {len(specs)} primaries ('services'); "
            "pass each item of decode_hosts() on its own"
        )
    spec = specs[0]
    connect_defaults = {
        "socket_connect_timeout": DEFAULT_POLICY.connect_timeout,
        "socket_keepalive": DEFAULT_POLICY.keepalive,
    }
    if isinstance(spec, ServerHost):
        if issubclass(spec.options["connection_class"], UnixDomainSocketConnection):
            connect_defaults.pop("socket_keepalive")  # a TCP option; unix socket connections refuse it
        return avalkey.ConnectionPool(**{**connect_defaults, **spec.options})
    if isinstance(spec, SentinelHost):
        sentinel_options = {
            "socket_connect_timeout": DEFAULT_POLICY.connect_timeout,
            "socket_timeout": DEFAULT_POLICY.socket_timeout,
            **spec.sentinel_options,
        }
        sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_options)
        pool: avalkey.ConnectionPool = SentinelConnectionPool(
            spec.service_name, sentinel, **{**connect_defaults, **spec.options}
        )
        return pool
    raise HostConfigError(
        "create_pool cannot make a pool for a Sentinel entry with 'services': [] (every monitored primary) "
        "without asking the Sentinels; name the primary with 'master_name'"
    )


async def _close_valkey(connection: avalkey.Valkey) -> None:
    """Close a client and the connection pool behind it, as 0.3's layers closed theirs."""
    await connection.aclose(close_connection_pool=True)


def _wrap_close(proxy: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop.close()`` first run ``proxy._layers[loop].flush()`` (if that entry exists) and drop the entry.

    0.3's layers kept their per-loop connections in ``_layers`` and used this so that ``async_to_sync``, which
    closes its loop after each call, left no connection open. The hook runs once; later closes are the loop's own.
    """
    original_close = loop.close

    def flush_then_close(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> Any:
        layer = proxy._layers.pop(self, None)
        if layer is not None:
            self.run_until_complete(layer.flush())
        self.close = original_close  # type: ignore[method-assign]
        return original_close(*args, **kwargs)

    loop.close = types.MethodType(flush_then_close, loop)  # type: ignore[method-assign]
