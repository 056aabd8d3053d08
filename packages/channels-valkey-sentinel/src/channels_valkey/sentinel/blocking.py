"""Blocking commands (``BZPOPMIN``, ``BZMPOP``, ``BRPOP`` ...) that can be interrupted without losing their reply.

Cancelling a valkey-py command drops its connection and throws away the reply in flight; for a blocking pop that
reply is data the server has already removed. So each call takes a connection of the shard's blocking pool for
itself and runs in a shielded task: a cancelled caller unblocks it on the server (``CLIENT UNBLOCK``, when the ACL
allows it; otherwise it waits out the block time), collects whatever it returned, and hands that to the caller's
``on_interrupted`` (which puts it back) instead of losing it. Each call has its own connection, so a reader blocked
on one key never delays another's.

A receive is one blocking call, so its cost matters: connections are kept here between calls (not handed back to
the pool, whose checks cost more than a pop), the command is written straight to the socket, and the reply is read
under one timer (the pool's ``socket_timeout``, block time included) instead of valkey-py's timeout wrappers.

Both layers use it through :meth:`channels_valkey.sentinel.Shard.blocking_call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool

from channels_valkey.sentinel.lane import read_reply
from channels_valkey.sentinel.transport_writes import write_command

logger = logging.getLogger("channels_valkey.sentinel")

#: Seconds between two ``CLIENT UNBLOCK`` attempts while the blocking command has not reached the server yet.
UNBLOCK_RETRY = 0.02
#: Most distinct commands whose packed bytes are remembered (the cache starts over when full).
MAX_PACKED = 1024
#: Most idle connections kept here for the next blocking call; more go back to the pool, still connected.
MAX_KEPT = 64

#: What receives the reply of a call whose caller was cancelled (it must put the popped data back).
OnInterrupted = Callable[[object], Awaitable[None]]


class InterruptibleCalls:
    """Blocking commands on connections of ``pool``, safe to cancel; ``control`` sends the unblock."""

    def __init__(self, pool: ConnectionPool, control: avalkey.Valkey) -> None:
        self._pool = pool
        self._control = control
        #: Connections taken from the pool and kept for the next call, most recently used last.
        self._idle: list[AbstractConnection] = []
        # The server's id of each kept connection: asked once per connection (and again after it reconnects);
        # False where the ACL refuses CLIENT ID.
        self._ids: weakref.WeakKeyDictionary[AbstractConnection, int | bool] = weakref.WeakKeyDictionary()
        #: Commands as written on the wire, by their arguments: a reader repeats the same pop over and over.
        self._packed: dict[tuple[Any, ...], list[bytes]] = {}

    async def call(self, args: Sequence[object], on_interrupted: OnInterrupted) -> object:
        """The raw reply of the blocking command ``args``.

        If the caller is cancelled, the reply the server sends meanwhile (when it is not empty) is passed to
        ``on_interrupted`` before the cancellation goes on.
        """
        connection = await self._take(str(args[0]))
        written = handed_over = False
        try:
            client_id = await self._client_id(connection)
            await self._write(connection, args)
            written = True
            return await self._read(connection, args)
        except asyncio.CancelledError:
            if not written:
                # Cut short while asking CLIENT ID or a health check: a reply may be on its way; start afresh.
                await connection.disconnect(nowait=True)
                raise
            # The valkey-py parser resumes a reply it had begun, so the finish reads on where the caller stopped.
            # Shielded: a second cancellation (a closing loop insists) must not drop what was popped.
            finishing = asyncio.ensure_future(self._finish(connection, args, client_id, on_interrupted))
            finishing.add_done_callback(_retrieve)
            try:
                await asyncio.shield(finishing)
            except asyncio.CancelledError:
                handed_over = True
                finishing.add_done_callback(lambda _: _spawn(self._keep(connection)))
            raise
        finally:
            if not handed_over:
                await self._keep(connection)

    async def _take(self, command: str) -> AbstractConnection:
        while self._idle:
            connection = self._idle.pop()
            reader = connection._reader
            if connection.is_connected and reader is not None and not reader.at_eof():
                return connection
            await self._discard(connection)
        fresh: AbstractConnection = await self._pool.get_connection(command)
        return fresh

    async def _keep(self, connection: AbstractConnection) -> None:
        if not connection.is_connected:
            await self._discard(connection)
        elif len(self._idle) < MAX_KEPT:
            self._idle.append(connection)
        else:
            # Connected and fine, only more than a burst of readers leaves behind: the pool keeps it.
            await self._pool.release(connection)

    async def _discard(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
        await self._pool.release(connection)

    async def aclose(self, *, keep_connections: bool = False) -> None:
        """Give every kept connection back to the pool, closed (``keep_connections``: open, for the pool to park
        them; each is clean, its last reply read)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            if keep_connections and connection.is_connected:
                await self._pool.release(connection)
            else:
                await self._discard(connection)

    async def _write(self, connection: AbstractConnection, args: Sequence[Any]) -> None:
        if (
            connection.health_check_interval
            and asyncio.get_running_loop().time() > connection.next_health_check
        ):
            await connection.check_health()
        writer = connection._writer
        if writer is None:
            raise valkey_errors.ConnectionError(
                "the blocking connection closed before the command was written"
            )
        key = tuple(args)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= MAX_PACKED:
                self._packed.clear()
            packed = self._packed[key] = connection.pack_command(*args)
        write_command(writer.transport, packed, "the blocking call")

    async def _read(self, connection: AbstractConnection, args: Sequence[object]) -> object:
        """The command's reply, within the pool's ``socket_timeout`` (which includes the block time)."""
        loop = asyncio.get_running_loop()
        timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        writer = connection._writer
        expired: list[bool] = []
        timer = loop.call_later(timeout, _expire, writer, expired) if timeout and writer is not None else None
        try:
            reply = await read_reply(connection)
        except Exception as error:
            await connection.disconnect(nowait=True)
            if expired:
                raise valkey_errors.TimeoutError(f"no reply to {args[0]} within {timeout:g}s") from error
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if connection.health_check_interval:
            connection.next_health_check = loop.time() + connection.health_check_interval
        if isinstance(reply, valkey_errors.ResponseError):
            raise reply
        return reply

    async def _finish(
        self,
        connection: AbstractConnection,
        args: Sequence[object],
        client_id: int | bool,
        on_interrupted: OnInterrupted,
    ) -> None:
        """Unblock the command whose caller was cancelled, read its reply and hand it to ``on_interrupted``."""
        reading = asyncio.ensure_future(self._read(connection, args))
        reading.add_done_callback(_retrieve)  # this finish may itself be cut short by a closing loop
        # The unblock can reach the server before the blocking command does (it travels on another connection),
        # and then unblocks nothing: repeat it until the command has ended.
        while client_id and not reading.done():
            try:
                if await self._control.client_unblock(int(client_id)):
                    break
            except (valkey_errors.ValkeyError, OSError):
                break
            await asyncio.wait({reading}, timeout=UNBLOCK_RETRY)
        try:
            reply = await reading
        except (valkey_errors.ValkeyError, OSError):
            return
        if reply:
            await on_interrupted(reply)

    async def _client_id(self, connection: AbstractConnection) -> int | bool:
        known = self._ids.get(connection)
        if known is not None:
            return known
        try:
            client_id: int | bool = int(await _command(connection, "CLIENT", "ID"))  # type: ignore[call-overload]
        except valkey_errors.NoPermissionError:
            client_id = False
        if connection not in self._ids:
            connection.register_connect_callback(self._forget)
        self._ids[connection] = client_id
        return client_id

    async def _forget(self, connection: AbstractConnection) -> None:
        # A reconnected connection (server restart, failover) has a new id.
        self._ids.pop(connection, None)


def _expire(writer: asyncio.StreamWriter, expired: list[bool]) -> None:
    """Time is up for a blocking read: close the socket under it, so the read fails (as a timeout)."""
    expired.append(True)
    writer.transport.abort()


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    asyncio.ensure_future(work).add_done_callback(_retrieve)


async def _command(connection: AbstractConnection, *args: object) -> object:
    await connection.send_command(*args)
    return await connection.read_response()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of a task whose caller may have gone, so a failure is logged, not left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("blocking command ended with %r", task.exception())


def bzpopmin_entry(reply: object) -> tuple[bytes, float] | None:
    """The (member, score) of a ``BZPOPMIN`` reply (``[key, member, score]``), or None when it timed out."""
    if not reply:
        return None
    if not isinstance(reply, list | tuple) or len(reply) != 3:
        raise valkey_errors.DataError(f"unexpected BZPOPMIN reply {reply!r}")
    _key, member, score = reply
    return (bytes(member), float(score))
