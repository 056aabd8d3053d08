"""A blocking pop (``BZPOPMIN``) that can be interrupted without losing what the server already popped.

Cancelling a valkey-py command drops its connection and throws away the reply in flight; for ``BZPOPMIN`` that
reply is a message the server has already removed from the queue. So each pop takes a connection of the shard's
blocking pool for itself and runs in a shielded task: a cancelled caller unblocks it on the server
(``CLIENT UNBLOCK``, when the ACL allows it; otherwise it waits out the block time), collects whatever it returned,
and hands that back instead of losing it. Each pop has its own connection, so a reader blocked on one queue never
delays another queue's reader.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool

logger = logging.getLogger("channels_valkey.core")

Entry = tuple[bytes, float]

#: Seconds between two ``CLIENT UNBLOCK`` attempts while the pop has not reached the server yet.
UNBLOCK_RETRY = 0.02


class BlockingPop:
    """``BZPOPMIN`` on connections of ``pool``, safe to cancel; ``control`` sends the unblock."""

    def __init__(self, pool: ConnectionPool, control: avalkey.Valkey) -> None:
        self._pool = pool
        self._control = control
        # The server's id of each pooled connection: asked once per connection (and again after it reconnects);
        # False where the ACL refuses CLIENT ID.
        self._ids: weakref.WeakKeyDictionary[AbstractConnection, int | bool] = weakref.WeakKeyDictionary()

    async def pop(
        self, key: str, timeout: float, on_interrupted: Callable[[Entry], Awaitable[None]]
    ) -> Entry | None:
        """Pop the lowest-scored member of ``key``, waiting up to ``timeout`` seconds; None when nothing came.

        If the caller is cancelled, whatever the server popped meanwhile is passed to ``on_interrupted`` (which
        puts it back) before the cancellation goes on.
        """
        connection = await self._pool.get_connection("BZPOPMIN")
        try:
            client_id = await self._client_id(connection)
            popping = asyncio.ensure_future(_command(connection, "BZPOPMIN", key, timeout))
            popping.add_done_callback(_retrieve)
            try:
                return _entry(await asyncio.shield(popping))
            except asyncio.CancelledError:
                # Shielded too: a second cancellation (a closing loop insists) must not drop what was popped.
                interrupting = asyncio.ensure_future(self._interrupt(popping, client_id, on_interrupted))
                interrupting.add_done_callback(_retrieve)
                await asyncio.shield(interrupting)
                raise
        finally:
            await self._pool.release(connection)

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

    async def _interrupt(
        self,
        popping: asyncio.Future[object],
        client_id: int | bool,
        on_interrupted: Callable[[Entry], Awaitable[None]],
    ) -> None:
        # The unblock can reach the server before the pop does (it travels on another connection), and then
        # unblocks nothing: repeat it until the pop has ended.
        while client_id and not popping.done():
            try:
                if await self._control.client_unblock(int(client_id)):
                    break
            except (valkey_errors.ValkeyError, OSError):
                break
            await asyncio.wait({popping}, timeout=UNBLOCK_RETRY)
        try:
            result = await popping
        except (valkey_errors.ValkeyError, OSError):
            return
        entry = _entry(result)
        if entry is not None:
            await on_interrupted(entry)


async def _command(connection: AbstractConnection, *args: object) -> object:
    await connection.send_command(*args)
    return await connection.read_response()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of a task whose caller may have gone, so a failure is logged, not left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("blocking pop ended with %r", task.exception())


def _entry(result: object) -> Entry | None:
    if not result:
        return None
    if not isinstance(result, list | tuple) or len(result) != 3:
        raise valkey_errors.DataError(f"unexpected BZPOPMIN reply {result!r}")
    _key, member, score = result
    return (bytes(member), float(score))
