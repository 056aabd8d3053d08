"""A command lane: commands of many tasks on one connection, written at once and answered in order.

valkey-py spends most of a command's client time around it: taking a connection from the pool and polling it,
timeouts wrapped around the write and the read, giving the connection back. A layer's hot commands (a send is one
script call) are short and independent, so the lane skips all of that: each command is written the moment it is
issued, on one connection per shard and event loop, and one reader task hands the replies back in the order they
come (Valkey answers a connection's commands in order). Concurrent commands are pipelined without waiting for each
other, and a cancelled caller only stops waiting: its reply is still read, so the connection never goes out of step.

A lost connection fails every command still waiting with a ``ConnectionError`` (the command may have run); the
next command connects again through the pool, which re-asks Sentinel where there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool

from channels_valkey.sentinel.tasks import cancel_and_wait

#: Seconds a lane's connection may sit idle before it is checked for a server that has closed it.
IDLE_CHECK = 1.0
#: Bytes waiting in the socket's write buffer above which a caller waits for them to drain.
WRITE_HIGH_WATER = 1 << 20


class CommandLane:
    """Pipelined commands on one connection of ``pool``, for one event loop."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._last_used = 0.0

    async def execute_command(self, *args: Any) -> Any:
        """Send one command and return its reply (the raw reply: no valkey-py response callbacks)."""
        connection = await self._ready_connection()
        writer = connection._writer
        if writer is None:
            raise valkey_errors.ConnectionError("the lane's connection closed before the command was written")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Written and queued in one step with no await between: the reply to read next is always this one's.
        writer.writelines(connection.pack_command(*args))
        self._pending.append(reply)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(connection))
        if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await writer.drain()
        return await reply

    async def _ready_connection(self) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        connection = self._connection
        if connection is not None and connection.is_connected:
            if loop.time() - self._last_used > IDLE_CHECK and not self._pending:
                # A server that closed the connection while it was idle is found now, before anything is
                # written, so the command is known not to have run and can be retried safely.
                try:
                    # True when the server closed it (end of stream) or sent something unasked.
                    stale = await connection.can_read_destructive()
                except (valkey_errors.ValkeyError, OSError):
                    stale = True
                if stale:
                    await self._drop(connection)
                    return await self._ready_connection()
            self._last_used = loop.time()
            return connection
        async with self._connect_lock:
            if self._connection is not None and not self._connection.is_connected:
                await self._drop(self._connection)
            if self._connection is None:
                self._connection = await self._pool.get_connection("_")
            self._last_used = loop.time()
            return self._connection

    async def _read(self, connection: AbstractConnection) -> None:
        try:
            while self._pending:
                try:
                    reply: Any = await connection.read_response()
                except valkey_errors.ResponseError as error:  # an error reply: this command's alone
                    reply = error
                waiting = self._pending.popleft()
                if waiting.done():
                    continue  # its caller was cancelled; the reply was still read
                if isinstance(reply, valkey_errors.ResponseError):
                    waiting.set_exception(reply)
                else:
                    waiting.set_result(reply)
        except BaseException as error:
            self._fail_pending(error)
            await self._drop(connection)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._reader = None

    def _fail_pending(self, error: BaseException) -> None:
        if not isinstance(error, valkey_errors.ConnectionError | valkey_errors.TimeoutError):
            error = valkey_errors.ConnectionError(f"the lane's connection failed: {error!r}")
        while self._pending:
            waiting = self._pending.popleft()
            if not waiting.done():
                waiting.set_exception(error)

    async def _drop(self, connection: AbstractConnection) -> None:
        if self._connection is connection:
            self._connection = None
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self._pool.release(connection)

    async def aclose(self) -> None:
        """Stop reading and give the connection back; commands still waiting fail with ``ConnectionError``."""
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        self._fail_pending(valkey_errors.ConnectionError("the lane was closed"))
        if self._connection is not None:
            await self._drop(self._connection)
