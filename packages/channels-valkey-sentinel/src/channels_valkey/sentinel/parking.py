"""Server connections kept from an event loop that closes, for the next loop that needs one.

Sync code calls a layer through ``async_to_sync`` (a Django view, a Celery task), which runs every call on an event
loop of its own and closes it when the call returns. Connections are asyncio transports of the loop that opened
them, so each call used to connect, authenticate and close again: a connection per call for the server, and most
of the call's time for the caller. The socket under a transport does not belong to any loop, though. When a loop
closes, the connection manager takes the sockets of its idle command connections out of their transports and keeps
them in a :class:`ConnectionPark`; a pool on the next loop (:class:`ParkingPool`) wraps a parked socket in a
transport of its own instead of connecting. The server sees one long-lived client, already authenticated and on
the right database, however many loops come and go.

What is parked, and what never is:

- Only a connection with nothing unanswered, nothing unread and nothing unwritten: the server's next reply on it
  is the reply to the next command written.
- Plain TCP and unix-socket connections, and a Sentinel-followed shard's under the primary's address, only while the
  process's follower of the service names that primary (follower.py; a failover closes the former primary's). TLS
  keeps its state in the loop's transport: it connects per loop as before.
- At most :data:`PARK_LIMIT` sockets per server, each at most :data:`PARK_IDLE_SECONDS`; the rest are closed.
- One owner at a time: a socket is taken out of the park before a loop uses it. A child process after ``fork`` does
  not use its parent's sockets (it closes its copies).
- A socket the server closed while it waited is seen when it is taken (a peek finds it at its end, or holding
  bytes nobody asked for): it is closed and the next one tried, or the pool connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from valkey.asyncio.connection import AbstractConnection, ConnectionPool, UnixDomainSocketConnection

from channels_valkey.sentinel.restarts import CheckedPool

__all__ = [
    "PARK_IDLE_SECONDS",
    "PARK_LIMIT",
    "ConnectionPark",
    "ConnectionParks",
    "ParkingPool",
    "connect_from_park",
    "park_idle_connections",
]

#: Most sockets kept for one server: enough for the loops of a busy thread pool calling at once.
PARK_LIMIT = 16
#: Seconds a socket may wait in the park before it is closed.
PARK_IDLE_SECONDS = 300.0
#: Commands that make a connection a Pub/Sub one.
_SUBSCRIBING = frozenset({"SUBSCRIBE", "SSUBSCRIBE", "PSUBSCRIBE"})


class ConnectionPark:
    """The parked sockets of one server, newest last; safe to use from any thread."""

    def __init__(self, limit: int = PARK_LIMIT, idle_seconds: float = PARK_IDLE_SECONDS) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._sockets: deque[tuple[float, socket.socket]] = deque()
        self._pid = os.getpid()

    def put(self, sock: socket.socket) -> None:
        """Keep ``sock`` for the next loop, or close it when the park is full."""
        with self._lock:
            self._forget_if_forked()
            self._close_stale(time.monotonic())
            if len(self._sockets) < self.limit:
                self._sockets.append((time.monotonic(), sock))
                return
        sock.close()

    def take(self) -> socket.socket | None:
        """The most recently parked socket (the likeliest to be alive), or None."""
        with self._lock:
            self._forget_if_forked()
            self._close_stale(time.monotonic())
            return self._sockets.pop()[1] if self._sockets else None

    def close(self) -> None:
        """Close every parked socket."""
        with self._lock:
            sockets, self._sockets = self._sockets, deque()
        for _, sock in sockets:
            sock.close()

    def __len__(self) -> int:
        return len(self._sockets)

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            # The parent process owns these connections: closing our copies leaves them open for it.
            self._pid = os.getpid()
            for _, sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _close_stale(self, now: float) -> None:
        while self._sockets and now - self._sockets[0][0] > self.idle_seconds:
            self._sockets.popleft()[1].close()


class ConnectionParks:
    """The parks of one connection manager, one per server it connects to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parks: dict[Hashable, ConnectionPark] = {}

    def park(self, server: Hashable) -> ConnectionPark:
        """The park of ``server``: a key naming one server of the manager and a kind of connection, whose first
        item is the shard index (``((index, node address), "blocking")``)."""
        with self._lock:
            found = self._parks.get(server)
            if found is None:
                found = self._parks[server] = ConnectionPark()
            return found

    def parked(self) -> int:
        """Sockets parked now, over every server."""
        with self._lock:
            return sum(len(park) for park in self._parks.values())

    def parked_by_shard(self) -> dict[int, int]:
        """Sockets parked now, by shard index (the first item of every key the manager gives, see :meth:`park`)."""
        with self._lock:
            parks = list(self._parks.items())
        counts: dict[int, int] = {}
        for key, park in parks:
            index = _shard_of(key)
            counts[index] = counts.get(index, 0) + len(park)
        return counts

    def close_where(self, condition: Callable[[Hashable], bool]) -> None:
        """Close the sockets parked under every key for which ``condition`` holds (a server no longer to be used)."""
        with self._lock:
            parks = [park for key, park in self._parks.items() if condition(key)]
        for park in parks:
            park.close()

    def close(self) -> None:
        """Close every parked socket (the manager is closed or gone)."""
        with self._lock:
            parks = list(self._parks.values())
        for park in parks:
            park.close()


def _shard_of(key: Hashable) -> int:
    found: Any = key
    while isinstance(found, tuple):
        found = found[0]
    return int(found)


class ParkingPool(CheckedPool):
    """A valkey-py pool that connects through parked sockets first, and parks its idle connections on request.

    An adopted socket is no fresh connection, so the restart check (``CheckedPool``) does not ask its server; one
    found closed counts as a failed connection, so the fresh connection made instead asks.
    """

    def __init__(self, *, park: ConnectionPark, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.park = park

    async def get_connection(self, command_name: Any, *keys: Any, **options: Any) -> AbstractConnection:
        # A connection made for Pub/Sub is closed with its loop, never parked: a parked socket given to it would
        # be one fewer for the command connections that come back to the park.
        if str(command_name).upper() in _SUBSCRIBING:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
            try:
                await super().ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        taken: AbstractConnection = await super().get_connection(  # type: ignore[no-untyped-call]
            command_name, *keys, **options
        )
        return taken

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if not await connect_from_park(connection, self.park, on_dead=self.parked_socket_dead):
            await super().ensure_connection(connection)

    async def park_idle(self) -> int:
        """Move the sockets of the idle connections to the park (the loop closes); returns how many."""
        return await park_idle_connections(self, lambda connection: self.park)


async def connect_from_park(
    connection: AbstractConnection, park: ConnectionPark, *, on_dead: Callable[[], None] | None = None
) -> bool:
    """Give ``connection`` (not connected yet) a socket from ``park`` instead of a new one; False when the park
    has none that is still open. ``on_dead`` is told of each parked socket the server closed meanwhile."""
    if connection.is_connected or connection.protocol not in (2, "2"):
        return False
    while (sock := park.take()) is not None:
        if _quiet(sock) and await _adopt(connection, sock):
            return True  # the peek was valkey-py's check: open, nothing to read
        sock.close()  # the server closed it while it waited (or spoke unasked): try the next one
        if on_dead is not None:
            on_dead()
    return False


async def park_idle_connections(
    pool: ConnectionPool, park_of: Callable[[AbstractConnection], ConnectionPark | None]
) -> int:
    """Move the sockets of ``pool``'s idle connections to their parks (``park_of`` a connection, None: not to be
    kept); returns how many. The connections that cannot be parked stay in the pool, for its ``disconnect``."""
    parked = 0
    kept: list[AbstractConnection] = []
    while pool._available_connections:
        connection = pool._available_connections.pop()
        park = park_of(connection)
        sock = _detach(connection) if park is not None else None
        if park is not None and sock is not None:
            park.put(sock)
            parked += 1
        else:
            kept.append(connection)
    pool._available_connections.extend(kept)
    if parked:
        await asyncio.sleep(0)  # the aborted transports close their own file descriptors now
    return parked


def _detach(connection: AbstractConnection) -> socket.socket | None:
    """A duplicate of ``connection``'s socket, the connection's transport aborted; None when it must not be kept."""
    writer = connection._writer
    if writer is None or connection.protocol not in (2, "2"):
        return None
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size() or transport.get_extra_info("ssl_object"):
        return None
    if _has_unread(connection):
        return None
    raw = transport.get_extra_info("socket")
    if raw is None:
        return None
    try:
        sock = socket.socket(fileno=os.dup(raw.fileno()))
    except OSError:
        return None
    transport.abort()  # closes the original descriptor only; the server sees nothing
    connection._reader = None
    connection._writer = None
    with contextlib.suppress(Exception):
        connection._parser.on_disconnect()
    return sock


def _quiet(sock: socket.socket) -> bool:
    """Whether ``sock`` is open with nothing to read: neither at its end nor holding bytes nobody asked for."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _has_unread(connection: AbstractConnection) -> bool:
    reader = connection._reader
    if reader is not None and getattr(reader, "_buffer", None):
        return True
    libvalkey_reader = getattr(connection._parser, "_reader", None)
    has_data = getattr(libvalkey_reader, "has_data", None)
    return bool(has_data()) if callable(has_data) else False


async def _adopt(connection: AbstractConnection, sock: socket.socket) -> bool:
    """Make ``sock`` (connected, authenticated, on the right database) ``connection``'s transport on this loop;
    False when it cannot be."""
    try:
        if isinstance(connection, UnixDomainSocketConnection):
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
    except OSError:
        return False
    connection._reader = reader
    connection._writer = writer
    connection._parser.on_connect(connection)
    if connection.health_check_interval:
        # The peek before adopting it was a health check: the first command needs no PING in front.
        connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
    return True
