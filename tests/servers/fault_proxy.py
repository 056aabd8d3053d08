"""A TCP proxy on a free loopback port that adds latency, pauses, cuts and refuses connections on command.

Reconnect, cancellation and pool-recovery tests need network faults that a real server cannot produce on demand.
The proxy runs on its own event loop in a daemon thread (see ``_loop_thread``), so it serves sync tests, async
tests and ``async_to_sync`` code alike, and keeps forwarding while a test's loop is blocked. Every control method
returns only once the change is in effect on the proxy's loop.

With an ``ssl_context`` the listening side speaks TLS and forwards plaintext: that is the TLS proxy. With
``plaintext_too`` as well, the port also serves clients that speak plaintext: each connection is told apart by its
first byte, as a node of the TLS Sentinel group needs (its Sentinels and replicas reach it in plaintext at the
address its TLS clients use).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import struct
import sys
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar, cast

from ._loop_thread import CALL_TIMEOUT, LoopThread

LOOPBACK = "127.0.0.1"
#: Seconds to reach the target before the client connection is reset.
CONNECT_TIMEOUT = 5.0
#: Seconds a client gets to finish the TLS handshake (on a port taking plaintext too: to send its first byte).
TLS_HANDSHAKE_TIMEOUT = 5.0
#: The first byte of every TLS connection: the record type of the client's ClientHello (RFC 8446, 5.1). RESP
#: commands start with ``*`` or a letter, so one byte tells the two apart.
TLS_HANDSHAKE_RECORD = 0x16
#: Seconds a gracefully closing connection gets to flush before it is aborted.
CLOSE_TIMEOUT = 1.0
#: Seconds a closing TLS connection waits for the client's close_notify (Python 3.11+; before, CLOSE_TIMEOUT).
TLS_SHUTDOWN_TIMEOUT = 0.25
#: Bytes buffered per direction before the proxy stops reading from the sender (TCP backpressure), and the level
#: at which it reads again.
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18

_Chunk = tuple[float, bytes]
_P = TypeVar("_P", bound="FaultProxy")
_T = TypeVar("_T")


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: stamps what it receives with its delivery time and queues it."""

    def __init__(self, relay: _Relay, *, tls: bool = False) -> None:
        self._relay = relay
        self.transport: asyncio.Transport | None = None
        self.tls = tls
        self._inbox: asyncio.Queue[_Chunk | None] = asyncio.Queue()
        self._queued = 0
        self._throttled = False
        self._ended = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._peer: _Side | None = None

    # Protocol callbacks -----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._inbox.put_nowait((asyncio.get_running_loop().time() + self._relay.latency, data))
        self._queued += len(data)
        if self._queued > HIGH_WATER and not self._throttled and self.transport is not None:
            self._throttled = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._end()
        # A plain socket stays open for the reply (half-close); asyncio ignores "keep open" for TLS and warns.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self._writable.set()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._peer is not None:
            # Nothing the peer still sends can be delivered here: stop waiting for it.
            self._peer._end()

    def link(self, peer: _Side) -> None:
        """Pair the two sides of a connection, so that losing one ends the wait for the other."""
        self._peer, peer._peer = peer, self
        for side, other in ((self, peer), (peer, self)):
            if side.lost.done():
                other._end()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Used by the pumps ------------------------------------------------------------------------------------------

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put_nowait(None)

    async def take(self) -> _Chunk | None:
        """The next chunk this side received, or None once it sent EOF or went away."""
        chunk = await self._inbox.get()
        if chunk is not None:
            self._queued -= len(chunk[1])
            if self._throttled and self._queued <= LOW_WATER and self.transport is not None:
                self._throttled = False
                self.transport.resume_reading()
        return chunk

    @property
    def gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        await self._writable.wait()

    def finish_sending(self, *, half_close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if half_close and self.transport.can_write_eof():
            self.transport.write_eof()
            return
        self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once, so that the peer sees a reset rather than EOF."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            _linger_zero(sock)
        self.transport.abort()

    async def wait_closed(self) -> None:
        """Return once the socket is closed; a close that cannot flush in time becomes an abort."""
        if self.transport is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            self.abort()
            try:
                await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                # An abort always closes the socket; not hearing of it is a bug in the proxy, reported at close().
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"no connection_lost() after aborting {self.transport!r}"}
                )


class _Connection:
    """An accepted client socket, its side once connected (after the TLS handshake), and the target's side."""

    def __init__(self, sock: socket.socket, client: _Side) -> None:
        self.sock = sock
        #: Whether a transport owns (and so will close) ``sock``.
        self.handed_over = False
        self.client = client
        self.upstream: _Side | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        # The socket itself first: during a TLS handshake it has no transport of ours yet.
        _linger_zero(self.sock)
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def close(self) -> None:
        """Close both sockets with a FIN, flushing what was already handed to them; nothing more is forwarded."""
        if self.client.transport is None:
            # Still in the TLS handshake: there is no stream to end gracefully.
            self.abort()
            return
        self.client.finish_sending(half_close=False)
        if self.upstream is not None:
            self.upstream.finish_sending(half_close=False)


class _Relay:
    """The proxy's state and work on its loop thread; only code running on that loop touches it."""

    def __init__(
        self, target: tuple[str, int], ssl_context: ssl.SSLContext | None, plaintext_too: bool = False
    ) -> None:
        self.target = target
        self.ssl_context = ssl_context
        self.plaintext_too = plaintext_too
        self.latency = 0.0
        self.refusing = False
        #: Client connections the listener has taken since the start, refused ones included.
        self.accepted = 0
        #: Client connections set up since the start: TLS ones once their handshake succeeded, and plaintext ones.
        self.tls_handshakes = 0
        self.plaintext_connections = 0
        self._closing = False
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None

    @property
    def flowing(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def listen(self, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one) and accept in a task of this loop; returns the port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Binding the same port again must not wait for its closed connections' TIME_WAIT to pass.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listener))
        bound: int = listener.getsockname()[1]
        return bound

    async def _accept(self, listener: socket.socket) -> None:
        # Accepting by hand rather than with create_server: the proxy holds every socket from the first moment,
        # so it can refuse before a TLS handshake and reset connections whose handshake is still running.
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue
            self.accepted += 1
            if self.refusing or self._closing:
                _linger_zero(sock)
                sock.close()
                continue
            connection = _Connection(sock, _Side(self))
            self._connections.add(connection)
            connection.task = loop.create_task(self._serve(connection))
            self._notify()

    async def _serve(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        client = connection.client
        try:
            client.tls = self.ssl_context is not None
            if client.tls and self.plaintext_too:
                client.tls = await _first_byte(connection.sock) == TLS_HANDSHAKE_RECORD
            connection.handed_over = True
            await loop.connect_accepted_socket(
                lambda: client, connection.sock, **self._tls_options(client.tls)
            )
            if client.tls:
                self.tls_handshakes += 1
            else:
                self.plaintext_connections += 1
            upstream = _Side(self)
            host, port = self.target
            await asyncio.wait_for(loop.create_connection(lambda: upstream, host, port), CONNECT_TIMEOUT)
            connection.upstream = upstream
            client.link(upstream)
            await asyncio.gather(self._pump(client, upstream), self._pump(upstream, client))
        except (OSError, asyncio.TimeoutError):
            # A failed handshake or an unreachable target: the client sees its connection reset.
            connection.abort()
        finally:
            if not connection.handed_over:
                connection.sock.close()  # no transport took it: it never got past its first byte
            try:
                for side in (client, connection.upstream):
                    if side is not None:
                        side.finish_sending(half_close=False)
                        await side.wait_closed()
            finally:
                self._connections.discard(connection)
                self._notify()

    def _tls_options(self, tls: bool) -> dict[str, Any]:
        if not tls or self.ssl_context is None:
            return {}
        options: dict[str, Any] = {"ssl": self.ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
        if sys.version_info >= (3, 11):
            # A client that is not reading never answers our close_notify; do not keep its socket for long.
            options["ssl_shutdown_timeout"] = TLS_SHUTDOWN_TIMEOUT
        return options

    async def _pump(self, source: _Side, destination: _Side) -> None:
        loop = asyncio.get_running_loop()
        while (chunk := await source.take()) is not None:
            deadline, data = chunk
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._wait_flowing(destination)
            await destination.send(data)
        # After a half-close the other direction keeps flowing; after a full close there is no one to answer to.
        destination.finish_sending(half_close=not source.gone)

    async def _wait_flowing(self, destination: _Side) -> None:
        flowing = self.flowing
        while not flowing.is_set() and not destination.lost.done():
            waiter = asyncio.ensure_future(flowing.wait())
            either: set[asyncio.Future[Any]] = {waiter, destination.lost}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # Controls ---------------------------------------------------------------------------------------------------

    async def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    async def set_flowing(self, flowing: bool) -> None:
        if flowing:
            self.flowing.set()
        else:
            self.flowing.clear()

    async def set_refusing(self, refusing: bool) -> None:
        self.refusing = refusing

    async def set_target(self, target: tuple[str, int]) -> None:
        self.target = target

    async def set_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        self.ssl_context = ssl_context

    async def count(self) -> int:
        return len(self._connections)

    async def accepted_count(self) -> int:
        return self.accepted

    async def set_up_counts(self) -> tuple[int, int]:
        return self.tls_handshakes, self.plaintext_connections

    async def wait_for_count(self, count: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._connections) != count:
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"the proxy still has {len(self._connections)} open connection(s) after {timeout:.1f}s, "
                    f"expected {count}"
                ) from None

    async def cut(self, graceful: bool = False) -> int:
        connections = list(self._connections)
        for connection in connections:
            if graceful:
                connection.close()
            else:
                connection.abort()
            if connection.task is not None:
                connection.task.cancel()
        await asyncio.gather(*(c.task for c in connections if c.task is not None), return_exceptions=True)
        for connection in connections:
            if not connection.handed_over:  # cancelled before its task ever ran
                connection.sock.close()
        return len(connections)

    async def stop_listening(self) -> None:
        """Close the listening socket (the kernel then refuses new connections); open connections stay."""
        accepting, self._accepting = self._accepting, None
        if accepting is not None:
            accepting.cancel()
            await asyncio.wait({accepting})
            if not accepting.cancelled() and (error := accepting.exception()) is not None:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "the proxy stopped accepting connections", "exception": error}
                )
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def listen_again(self, port: int) -> None:
        if self._listener is None:
            await self.listen(port)

    async def shutdown(self) -> None:
        self._closing = True
        await self.stop_listening()
        await self.cut()


class FaultProxy:
    """Forwards TCP from a free loopback port to ``target_host:target_port``, with faults on command.

    Use as a context manager or call :meth:`start` and :meth:`close`. Control methods may be called from any
    thread except the proxy's own and return once the change applies to every byte the proxy reads afterwards.
    """

    #: The scheme :meth:`url` uses when none is given.
    default_scheme = "valkey"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        plaintext_too: bool = False,
    ) -> None:
        _check_target(target_host, target_port)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext or None, got {ssl_context!r}")
        if plaintext_too and ssl_context is None:
            raise ValueError(
                "plaintext_too=True needs an ssl_context: without one the port takes only plaintext"
            )
        self._relay = _Relay((target_host, target_port), ssl_context, plaintext_too)
        self._thread = LoopThread(f"{type(self).__name__}->{target_host}:{target_port}")
        self._port: int | None = None
        self._closed = False

    # Life cycle -------------------------------------------------------------------------------------------------

    def start(self: _P) -> _P:
        """Bind the listening port and start forwarding; returns the proxy for chaining."""
        if self._closed:
            raise RuntimeError(f"{self!r} was closed; create a new proxy")
        if self._port is not None:
            return self
        self._thread.start()
        try:
            self._port = self._thread.call(self._relay.listen())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop listening, reset every open connection and stop the loop thread; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.running:
                self._thread.call(self._relay.shutdown())
        finally:
            self._thread.stop()
        if self._thread.errors:
            raise RuntimeError(f"{self!r} hit errors on its loop: " + "; ".join(self._thread.errors))

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Where it listens -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self!r} is not listening (call start() or use it as a context manager)")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def target(self) -> tuple[str, int]:
        """Where new connections go."""
        return self._relay.target

    def url(self, scheme: str | None = None, *, db: int | None = None, password: str | None = None) -> str:
        """A client URL for the proxy's port, e.g. ``valkey://127.0.0.1:PORT`` or ``valkeys://:pw@...:PORT/1``."""
        auth = f":{password}@" if password else ""
        path = f"/{db}" if db is not None else ""
        return f"{scheme or self.default_scheme}://{auth}{LOOPBACK}:{self.port}{path}"

    # Faults -----------------------------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (a round trip gains twice that); order is kept."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"latency must be a number of seconds, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds, 0 or more, got {seconds!r}")
        self._call(self._relay.set_latency(float(seconds)))

    def pause(self) -> None:
        """Stop passing bytes in both directions; connections stay open and what arrives is held back."""
        self._call(self._relay.set_flowing(False))

    def resume(self) -> None:
        """Pass bytes again, starting with everything held back during the pause, in order."""
        self._call(self._relay.set_flowing(True))

    def cut(self, *, graceful: bool = False) -> int:
        """Reset every open connection (both sides) and return how many there were; new ones are accepted.

        With ``graceful=True`` both sides get a FIN instead of a reset (RST), after the bytes already handed to
        their sockets; what the proxy still held back is dropped either way. To keep a client from reconnecting
        straight away, call :meth:`refuse` first.
        """
        return self._call(self._relay.cut(graceful))

    def refuse(self) -> None:
        """Reset every new connection at once; the port stays bound, open connections are left alone."""
        self._call(self._relay.set_refusing(True))

    def accept(self) -> None:
        """Forward new connections again (after :meth:`refuse`), on the same port."""
        self._call(self._relay.set_refusing(False))

    def stop_listening(self) -> None:
        """Close the listening port, as a dead server's is: connecting is refused (``ECONNREFUSED``), not reset
        after an accept as with :meth:`refuse`; open connections are left alone."""
        self._call(self._relay.stop_listening())

    def listen_again(self) -> None:
        """Listen on the same port again after :meth:`stop_listening` (doing nothing while listening).

        Raises OSError if something else took the port meanwhile.
        """
        self._call(self._relay.listen_again(self.port))

    def retarget(self, host: str, port: int) -> None:
        """Send connections opened from now on to ``host:port``; open ones keep their target."""
        _check_target(host, port)
        self._call(self._relay.set_target((host, port)))

    @property
    def connection_count(self) -> int:
        """Client connections open right now (including ones still reaching the target)."""
        return self._call(self._relay.count())

    @property
    def accepted_connections(self) -> int:
        """Client connections made to the proxy since it started, refused ones included: how often a client
        tried."""
        return self._call(self._relay.accepted_count())

    @property
    def tls_handshakes(self) -> int:
        """Client connections that completed a TLS handshake since the proxy started."""
        return self._call(self._relay.set_up_counts())[0]

    @property
    def plaintext_connections(self) -> int:
        """Client connections forwarded in plaintext since the proxy started (on a TLS port: only with
        ``plaintext_too``)."""
        return self._call(self._relay.set_up_counts())[1]

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Block until exactly ``count`` client connections are open; raise TimeoutError after ``timeout`` s.

        This blocks the calling thread: from a test whose own loop runs the clients, await
        :meth:`wait_for_connections_async` instead, or the clients cannot connect meanwhile.
        """
        _check_count(count)
        self._call(self._relay.wait_for_count(count, timeout), timeout=timeout + CALL_TIMEOUT)

    async def wait_for_connections_async(self, count: int, timeout: float = 5.0) -> None:
        """Like :meth:`wait_for_connections`, but lets the caller's event loop run while it waits."""
        _check_count(count)
        if self._port is None or self._closed:
            raise RuntimeError(f"{self!r} is not running (call start() or use it as a context manager)")
        await self._thread.call_async(self._relay.wait_for_count(count, timeout))

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = CALL_TIMEOUT) -> _T:
        if self._port is None or self._closed:
            coroutine.close()
            raise RuntimeError(f"{self!r} is not running (call start() or use it as a context manager)")
        return self._thread.call(coroutine, timeout)

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "not listening"
        host, port = self._relay.target
        return f"<{type(self).__name__} {where} -> {host}:{port}>"


async def _first_byte(sock: socket.socket) -> int:
    """The first byte the client sent on ``sock``, left in the socket for whoever reads it next.

    Raises ConnectionResetError when the client closes without sending anything, TimeoutError (asyncio's before
    Python 3.11) when it sends nothing for :data:`TLS_HANDSHAKE_TIMEOUT` seconds.
    """
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(readable, TLS_HANDSHAKE_TIMEOUT)
    finally:
        loop.remove_reader(sock.fileno())
    first = sock.recv(1, socket.MSG_PEEK)
    if not first:
        raise ConnectionResetError("the client closed its connection before sending anything")
    return first[0]


def _check_target(host: str, port: int) -> None:
    if not isinstance(host, str):
        raise TypeError(f"target host must be a str, got {host!r}")
    if not host:
        raise ValueError("target host must not be empty")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"target port must be an int, got {port!r}")
    if not 0 < port < 65536:
        raise ValueError(f"target port must be from 1 to 65535, got {port!r}")


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, got {count!r}")
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count!r}")


def _linger_zero(sock: Any) -> None:
    """Make closing ``sock`` send a TCP reset (RST) instead of a FIN; a closed socket is left alone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
