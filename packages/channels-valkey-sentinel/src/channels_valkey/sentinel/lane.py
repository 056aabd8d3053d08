"""A command lane: commands of many tasks on one connection, written at once and answered in order.

valkey-py spends most of a command's client time around it: taking a connection from the pool and polling it,
timeouts wrapped around the write and the read, giving the connection back. A layer's hot commands (a send is one
script call) are short and independent, so the lane skips all of that: each command is written the moment it is
issued, on one connection per shard and event loop, and the replies are handed back in the order they come
(Valkey answers a connection's commands in order). They are parsed where their bytes arrive, in the transport's
callback (:func:`~channels_valkey.sentinel.reply_feed.feed_replies`), so a caller resumes one event-loop step after
its reply arrived; with a parser other than libvalkey's a reader task, alive as long as the connection, reads them
instead. Concurrent commands are pipelined without waiting for each other, and a cancelled caller only stops
waiting: its reply is still read, so the connection never goes out of step.

No timeout wraps a read; a watchdog task fails the connection when the oldest unanswered command has waited longer
than the pool's ``socket_timeout``. Because the connection is read all the time, a server that closes it while the
lane is idle is noticed at once, and the next command connects again before it writes anything.

A lost connection fails every command still waiting with a ``ConnectionError`` (the command may have run); the
next command connects again through the pool, which re-asks Sentinel where there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool
from valkey.utils import LIBVALKEY_AVAILABLE

from channels_valkey.sentinel.exceptions import CommandNotSent
from channels_valkey.sentinel.reply_feed import feed_replies
from channels_valkey.sentinel.tasks import cancel_and_wait
from channels_valkey.sentinel.transport_writes import write_command

try:  # valkey-py's libvalkey extra, a dependency of this package: its C packer is four times as fast.
    from libvalkey import pack_command as _pack_in_c
except ImportError:  # pragma: no cover - installed without the extra
    _pack_in_c = None  # type: ignore[assignment]

#: Argument types that are no float: checked in one C-level pass over a bulk call's thousand arguments, before the
#: ``isinstance`` look for a float subclass that any other type needs.
_NOT_FLOATS = frozenset((str, bytes, int))
#: Bytes waiting in the socket's write buffer above which a caller waits for them to drain.
WRITE_HIGH_WATER = 1 << 20
#: Most seconds between two looks of the watchdog at the oldest unanswered command.
WATCHDOG_TICK = 1.0
#: Who owns the connection, in the error of a command its closed transport did not send.
_LANE = "the lane"


async def read_reply(connection: AbstractConnection) -> Any:
    """The connection's next reply or push message, parsed by valkey-py without the timeout it usually adds.

    For a reader that owns ``connection`` and bounds a silent server some other way: a timeout around every reply
    costs about as much as parsing it. An error reply is returned as its ``ResponseError``, not raised; a closed
    or failed connection raises ``ConnectionError``.
    """
    parser: Any = connection._parser
    try:
        if connection.protocol in (3, "3") and not LIBVALKEY_AVAILABLE:
            return await parser.read_response(disable_decoding=False, push_request=True)
        return await parser.read_response(disable_decoding=False)
    except OSError as error:
        raise valkey_errors.ConnectionError(f"error while reading: {error!r}") from error


def pack(connection: AbstractConnection, args: tuple[Any, ...]) -> list[bytes]:
    """``args`` as the bytes of one command, packed as ``connection`` would pack them.

    The asyncio connections of valkey-py pack in Python even where libvalkey is installed; this uses the C packer
    when it gives the same bytes: UTF-8 text (the connection's encoding) and no floats, which the two format
    differently (the layers pass times as strings).
    """
    encoder = connection.encoder
    if (
        _pack_in_c is not None
        and encoder.encoding == "utf-8"
        and isinstance(args[0], str)
        and " " not in args[0]
        and (_NOT_FLOATS.issuperset(map(type, args)) or not any(isinstance(arg, float) for arg in args))
    ):
        try:
            return [_pack_in_c(args)]
        except TypeError:
            pass  # a value neither packs: valkey-py's own packer raises its DataError for it
    packed: list[bytes] = connection.pack_command(*args)
    return packed


class _Link:
    """The lane's connection and the tasks that live as long as it does."""

    def __init__(self, connection: AbstractConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        writer = connection._writer
        if writer is None:
            raise CommandNotSent("the lane's connection closed as it was taken from the pool")
        #: The connection's transport, held here since every command checks it and writes on it.
        self.transport: asyncio.WriteTransport = writer.transport
        self.loop = loop
        #: The task reading replies, where the parser is not libvalkey's (else the transport's callback parses).
        self.reader: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None
        #: The task giving the connection back after it was lost.
        self.closer: asyncio.Task[None] | None = None
        #: The connection failed or was let go of: no command is written on it any more.
        self.lost = False
        #: Loop time of the last reply, or of the write that made the lane busy again.
        self.progress = 0.0
        #: Why the watchdog closed the connection, reported instead of the read's error it causes.
        self.failure: BaseException | None = None
        self.released = False
        #: The lane's setup of the connection (:meth:`CommandLane._prepare`) is done: callers may write on it.
        self.ready = False

    @property
    def usable(self) -> bool:
        # A transport closing was reset under the lane a moment ago, before the lane read that, or closed by a
        # disconnect of its connection: either way a new connection is needed.
        return not self.lost and self.ready and not self.transport.is_closing()


class CommandLane:
    """Pipelined commands on one connection of ``pool``, for one event loop.

    ``on_lost`` is told when the connection fails under the lane (not when the lane lets go of it).
    """

    def __init__(self, pool: ConnectionPool, *, on_lost: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._on_lost = on_lost
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._pending: deque[asyncio.Future[Any]] = deque()

    async def execute_command(self, *args: Any) -> Any:
        """Send one command and return its reply (the raw reply: no valkey-py response callbacks)."""
        link = self._link
        if link is not None and link.usable and link.transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            # The usual case, without issue()'s coroutine. A write that takes the buffer over the mark is drained
            # by the next command, which goes through issue().
            return await self._write_on(link, args)
        return await (await self.issue(*args))

    async def issue(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; the future its reply will be set on (or the connection's failure)."""
        link = self._link
        if link is None or not link.usable:  # else it is writable: the usual case needs no coroutine for it
            link, _ = await self._writable()
        reply = self._write_on(link, args)
        if link.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            writer = link.connection._writer
            if writer is not None:
                await writer.drain()
        return reply

    async def execute_asking(self, *args: Any) -> Any:
        """Send ``ASKING`` and then one command, with no other caller's command between them, and return the
        command's raw reply (a cluster node serves a key of a slot it is importing only right after ``ASKING``)."""
        link, transport = await self._writable()
        loop = asyncio.get_running_loop()
        asking: asyncio.Future[Any] = loop.create_future()
        asking.cancel()  # its reply is read and dropped; a refused ASKING shows as the command's redirection
        reply: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            link.progress = loop.time()
        write_command(transport, [*pack(link.connection, ("ASKING",)), *pack(link.connection, args)], _LANE)
        self._pending.extend((asking, reply))
        return await reply

    async def _writable(self) -> tuple[_Link, asyncio.WriteTransport]:
        link = self._link
        if link is None or not link.usable:
            link = await self._connect()
        return link, link.transport

    async def _connect(self) -> _Link:
        async with self._connect_lock:
            link = self._link
            if link is not None and link.usable:
                return link
            if link is not None:
                await self._drop(link)
            loop = asyncio.get_running_loop()
            connection = await self._pool.get_connection("_")
            try:
                link = self._link = _Link(connection, loop)
            except CommandNotSent:
                await self._pool.release(connection)
                raise
            link.watchdog = loop.create_task(self._watch(link), name="channels-valkey lane watchdog")

            def on_reply(reply: Any) -> None:
                self._answer(link, reply)

            def on_lost(error: BaseException) -> None:
                self._lost(link, error)

            if not feed_replies(link.connection, on_reply, on_lost):
                link.reader = loop.create_task(self._read(link), name="channels-valkey lane reader")
            try:
                await self._prepare(link)
            except BaseException:
                await self._drop(link)
                raise
            link.ready = True
            return link

    async def _prepare(self, link: _Link) -> None:
        """Set up a new connection before any caller writes on it (nothing here; see tracking_lane.py)."""

    def _write_on(self, link: _Link, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Write one command on ``link``; the future of its reply."""
        reply: asyncio.Future[Any] = link.loop.create_future()
        if not self._pending:
            link.progress = link.loop.time()
        # Written and queued in one step with no await between: the reply to read next is always this one's.
        write_command(link.transport, pack(link.connection, args), _LANE)
        self._pending.append(reply)
        return reply

    def _answer(self, link: _Link, reply: Any) -> None:
        """Hand ``reply`` to the oldest waiting command."""
        if self._link is not link:
            return  # the lane let go of this connection; whoever waited was failed then
        if not self._pending:
            raise valkey_errors.ConnectionError(f"the server sent {reply!r}, which no command asked for")
        link.progress = link.loop.time()
        waiting = self._pending.popleft()
        if waiting.done():
            self._unawaited(waiting, reply)  # its caller was cancelled; the reply was still read
            return
        if isinstance(reply, valkey_errors.ResponseError):
            waiting.set_exception(reply)
        else:
            waiting.set_result(reply)

    def _lost(self, link: _Link, error: BaseException) -> None:
        """``link``'s connection failed: what waits on it fails, and the connection goes back to the pool."""
        if link.lost:
            return
        link.lost = True
        if self._on_lost is not None:
            self._on_lost()
        if link.failure is not None:  # the watchdog closed it: report why
            link.failure.__cause__ = error
            error = link.failure
        if self._link is link:
            self._link = None
            self._fail_pending(error)
        if not link.released:
            link.closer = link.loop.create_task(self._release(link), name="channels-valkey lane release")

    async def _read(self, link: _Link) -> None:
        """Read replies with valkey-py's parser, where :func:`feed_replies` cannot parse them as they arrive."""
        try:
            while True:
                self._answer(link, await read_reply(link.connection))
        except BaseException as error:
            self._lost(link, error)
            if isinstance(error, asyncio.CancelledError):
                raise

    async def _watch(self, link: _Link) -> None:
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        if not timeout:
            return
        loop = asyncio.get_running_loop()
        while True:
            wait = min(WATCHDOG_TICK, timeout / 2)
            if self._pending:
                # Wake when the oldest unanswered command runs out of time, so that its error comes at the
                # timeout rather than up to a tick later.
                wait = min(wait, link.progress + timeout - loop.time())
            await asyncio.sleep(max(wait, 0.0) + 0.001)
            if self._pending and loop.time() - link.progress > timeout:
                link.failure = valkey_errors.TimeoutError(f"no reply on the command lane within {timeout:g}s")
                await link.connection.disconnect(nowait=True)
                return

    def _fail_pending(self, error: BaseException) -> None:
        if not isinstance(error, valkey_errors.ConnectionError | valkey_errors.TimeoutError):
            error = valkey_errors.ConnectionError(f"the lane's connection failed: {error!r}")
        while self._pending:
            waiting = self._pending.popleft()
            if waiting.done():
                self._unawaited(waiting, error)
            else:
                waiting.set_exception(error)

    def _unawaited(self, reply: asyncio.Future[Any], outcome: Any) -> None:
        """What came for ``reply`` (a reply read, or the connection's failure) after its caller was cancelled:
        dropped here; :class:`~channels_valkey.sentinel.tracking_lane.TrackingLane` keeps some."""

    async def _drop(self, link: _Link, *, keep_connection: bool = False) -> None:
        """Stop ``link``'s tasks and give its connection back; what still waits on it fails.

        With ``keep_connection``, a connection that is still usable and owes no reply goes back open (for the
        pool to park it, see parking.py); any other is closed as usual.
        """
        keep = keep_connection and link.usable and not self._pending
        link.lost = True
        if self._link is link:
            self._link = None
            self._fail_pending(valkey_errors.ConnectionError("the lane's connection was dropped"))
        for task in (link.watchdog, link.reader):
            if task is not None:
                await cancel_and_wait(task)
        if link.closer is not None:
            await asyncio.wait([link.closer])  # not cancelled with this call: the connection goes back anyway
        await self._release(link, disconnect=not keep)

    async def _release(self, link: _Link, *, disconnect: bool = True) -> None:
        if link.released:
            return
        link.released = True
        if link.watchdog is not None and link.watchdog is not asyncio.current_task():
            link.watchdog.cancel()
        if disconnect:
            with contextlib.suppress(Exception):
                await link.connection.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self._pool.release(link.connection)

    async def aclose(self, *, keep_connection: bool = False) -> None:
        """Stop reading and give the connection back; commands still waiting fail with ``ConnectionError``.

        ``keep_connection``: give a clean connection back open, for its pool to park (the loop is closing).
        """
        link = self._link
        if link is not None:
            await self._drop(link, keep_connection=keep_connection)
        self._fail_pending(valkey_errors.ConnectionError("the lane was closed"))
