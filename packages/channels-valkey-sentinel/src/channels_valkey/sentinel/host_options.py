"""Connection options of a ``hosts`` entry checked before use: the keyword arguments valkey-py's pools take.

valkey-py accepts a typo in an option name, a port that is not a number or TLS options on a plain connection,
and fails only at the first connection. The checks here refuse them at once with :class:`EntryProblem`, which
:func:`channels_valkey.sentinel.decode_hosts` turns into a ``HostConfigError`` naming the entry.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import valkey.asyncio
from valkey.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from valkey.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from channels_valkey.sentinel.redaction import redact_url, redacted_repr
from channels_valkey.sentinel.specs import DEFAULT_PORT, is_subclass

URL_SCHEMES = ("valkey", "valkeys", "redis", "rediss", "unix")
URL_HINT = "check the port (1-65535) and percent-encode '/', ':' and '@' in the username and password."

# Keyword arguments that the pools take for themselves; the rest go to the connection class.
_SERVER_POOL_KEYS = frozenset({"connection_class", "max_connections"})
_SENTINEL_POOL_KEYS = frozenset({"connection_class", "max_connections", "ssl", "check_connection"})
# Where a primary is, only the Sentinels say.
_SENTINEL_LOCATION_KEYS = ("address", "host", "port", "path", "unix_socket_path")
_DIGITS = re.compile(r"[0-9]+")


class EntryProblem(Exception):
    """What is wrong with one entry; :func:`channels_valkey.sentinel.decode_hosts` adds which entry it is."""


def url_options(url: str) -> dict[str, Any]:
    """Keyword arguments for a connection pool from a URL, through valkey-py's own parser."""
    scheme, separator, _ = url.partition("://")
    if not separator and url.lower().startswith("unix:"):
        scheme = "unix"
    if scheme.lower() not in URL_SCHEMES:
        shown = f"scheme {scheme!r}" if separator else "no scheme"
        raise EntryProblem(
            f"the URL has {shown}; use one of {', '.join(s + '://' for s in URL_SCHEMES)} "
            "(e.g. 'valkey://localhost:6379/0')."
        )
    # urllib's messages can quote pieces of a password with unencoded '/' or ':', so none is passed on.
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EntryProblem(f"the URL cannot be parsed: {URL_HINT}") from None
    if port == 0:
        raise EntryProblem("port 0 in the URL; a port is 1-65535.")
    if parts.scheme != "unix":
        path_db = parts.path.strip("/")
        if path_db and not _DIGITS.fullmatch(path_db):
            raise EntryProblem(
                f"the URL path must be the database number (e.g. '/0'), nothing else; {URL_HINT}"
            )
    try:
        options: dict[str, Any] = parse_url(url)
    except ValueError as exc:
        raise EntryProblem(f"the URL cannot be parsed ({redact_url(str(exc))}).") from None
    if is_subclass(options.get("connection_class"), UnixDomainSocketConnection) and not options.get("path"):
        raise EntryProblem("a unix URL needs the socket path, e.g. 'unix:///run/valkey/valkey.sock'.")
    return options


def server_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments for ``ConnectionPool``: connection class chosen, host and port filled in."""
    options = dict(raw)
    connection_class = options.get("connection_class")
    if connection_class is not None and not is_subclass(connection_class, AbstractConnection):
        raise EntryProblem(
            f"'connection_class' must be a subclass of valkey.asyncio.connection.AbstractConnection, "
            f"got {connection_class!r}."
        )
    # The Valkey client's own spellings, which a pool does not understand, mapped to what they mean there.
    if "unix_socket_path" in options:
        clashing = [key for key in ("connection_class", "path", "ssl") if options.get(key)]
        if clashing:
            raise EntryProblem(f"'unix_socket_path' cannot be combined with {quoted(clashing)}.")
        options["path"] = options.pop("unix_socket_path")
        options["connection_class"] = connection_class = UnixDomainSocketConnection
    if "ssl" in options:
        ssl = options.pop("ssl")
        if not isinstance(ssl, bool):
            raise EntryProblem(f"'ssl' must be True or False, got {redacted_repr(ssl)}.")
        if ssl and connection_class is None:
            options["connection_class"] = connection_class = SSLConnection
        elif ssl and not is_subclass(connection_class, SSLConnection):
            raise EntryProblem(f"'ssl': True contradicts connection_class {connection_class!r}.")
    if connection_class is None:
        options["connection_class"] = connection_class = Connection
    if is_subclass(connection_class, UnixDomainSocketConnection):
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise EntryProblem(
                f"a unix socket connection needs 'path', the socket file, got {redacted_repr(path)}."
            )
    elif is_subclass(connection_class, Connection):
        options["host"] = checked_host(options.get("host", "localhost"))
        options["port"] = checked_port(options.get("port", DEFAULT_PORT))
    _check_common(options)
    _check_names(options, connection_class, _SERVER_POOL_KEYS)
    return options


def sentinel_primary_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments for ``SentinelConnectionPool`` (the primary's connections)."""
    options = dict(raw)
    given = [key for key in _SENTINEL_LOCATION_KEYS if key in options]
    if given:
        raise EntryProblem(
            f"the Sentinels say where the primary is, so a Sentinel entry takes no {quoted(given)}; "
            "put the Sentinels' addresses in 'sentinels'."
        )
    ssl = options.get("ssl", False)
    if not isinstance(ssl, bool):
        raise EntryProblem(f"'ssl' must be True or False, got {redacted_repr(ssl)}.")
    connection_class = options.get("connection_class")
    if connection_class is None:
        connection_class = SentinelManagedSSLConnection if ssl else SentinelManagedConnection
    elif not is_subclass(connection_class, SentinelManagedConnection):
        raise EntryProblem(
            "'connection_class' of a Sentinel entry must be a subclass of "
            f"valkey.asyncio.sentinel.SentinelManagedConnection, got {connection_class!r}."
        )
    _check_common(options)
    _check_names(options, connection_class, _SENTINEL_POOL_KEYS, excluded=("connection_pool", "host", "port"))
    return options


def check_client_names(sentinel_kwargs: Mapping[str, Any]) -> None:
    """Refuse option names that the ``valkey.asyncio.Valkey`` client of a Sentinel does not take."""
    accepted = _client_keywords()
    unknown = sorted(str(key) for key in sentinel_kwargs if key not in accepted)
    if unknown:
        raise EntryProblem(
            f"unknown option {quoted(unknown)} in 'sentinel_kwargs' (they go to valkey.asyncio.Valkey); "
            f"accepted: {', '.join(sorted(accepted))}."
        )


def checked_host(value: object) -> str:
    """``value`` if it is a host name or address: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise EntryProblem(f"the host must be a non-empty string, got {redacted_repr(value)}.")
    return value


def checked_port(value: object) -> int:
    """``value`` as a port number 1-65535; a string of digits (as from an environment variable) is accepted."""
    port = as_number(value)
    if port is None:
        raise EntryProblem(f"the port must be an int, got {redacted_repr(value)}.")
    if not 1 <= port <= 65535:
        raise EntryProblem(f"port {port} is out of range 1-65535.")
    return port


def as_number(value: object) -> int | None:
    """An int, or a string of digits as read from an environment variable; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


def quoted(keys: Iterable[str]) -> str:
    """Option names for a message: ``'a', 'b'``."""
    return ", ".join(repr(key) for key in keys)


def _check_common(options: dict[str, Any]) -> None:
    if "db" in options:
        options["db"] = _db(options["db"])
    for key in ("username", "password"):
        value = options.get(key)
        if value is not None and not isinstance(value, str | bytes):
            raise EntryProblem(f"{key!r} must be a string, got a {type(value).__name__}.")


def _db(value: object) -> int:
    db = as_number(value)
    if db is None or db < 0:
        raise EntryProblem(
            f"'db' must be a database number (an int of 0 or more), got {redacted_repr(value)}."
        )
    return db


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
    raise EntryProblem(
        f"unknown option {', '.join(hints)} for {_qualified(connection_class)}; "
        f"accepted options: {', '.join(sorted(accepted))}."
    )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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


@lru_cache(maxsize=1)
def _client_keywords() -> frozenset[str]:
    parameters = inspect.signature(valkey.asyncio.Valkey.__init__).parameters
    return frozenset(parameters) - {"self", "connection_pool", "host", "port"}
