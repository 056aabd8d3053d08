"""Host specs: what one entry of the ``hosts`` setting stands for, as :func:`decode_hosts` makes it.

Each spec holds ready keyword arguments for valkey-py, so the code that opens connections never parses settings
itself. Specs hold passwords, so their repr is their ``describe()``, which masks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

from valkey.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from channels_valkey.sentinel.redaction import redacted_userinfo

#: The server a layer uses when ``hosts`` is not given (or empty), as in channels-valkey 0.3.
DEFAULT_URL = "valkey://localhost:6379"
DEFAULT_PORT = 6379


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
        auth = redacted_userinfo(options)
        db = options.get("db", 0)
        connection_class = options.get("connection_class", Connection)
        if is_subclass(connection_class, UnixDomainSocketConnection):
            return f"unix://{auth}{options.get('path', '')}?db={db}"
        scheme = "valkeys" if is_subclass(connection_class, SSLConnection) else "valkey"
        address = host_port(options.get("host", "localhost"), options.get("port", DEFAULT_PORT))
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


def host_port(host: str, port: int) -> str:
    """``host:port`` for logs and errors, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_subclass(value: object, cls: type) -> bool:
    """Whether ``value`` is a class derived from ``cls`` (False for anything that is not a class)."""
    return isinstance(value, type) and issubclass(value, cls)


def _sentinel_list(sentinels: Iterable[tuple[str, int]]) -> str:
    return ", ".join(host_port(host, port) for host, port in sentinels)


def _extras(options: Mapping[str, Any]) -> str:
    notes = []
    if options.get("db"):
        notes.append(f"db {options['db']}")
    if options.get("username"):
        notes.append(f"user {options['username']}")
    if options.get("ssl") or is_subclass(options.get("connection_class"), SSLConnection):
        notes.append("TLS")
    return f" ({', '.join(notes)})" if notes else ""
