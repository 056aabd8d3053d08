"""Blocking commands (``BZPOPMIN``, ``BZMPOP``, ``BRPOP`` ...) that can be interrupted without losing their reply.

Cancelling a valkey-py command drops its connection and throws away the reply in flight; for a blocking pop that
reply is data the server has already removed. So each call takes a connection of the shard's blocking pool for
itself and runs in a shielded task: a cancelled caller unblocks it on the server (``CLIENT UNBLOCK``, when the ACL
allows it; otherwise it waits out the block time), collects whatever it returned, and hands that to the caller's
``on_interrupted`` (which puts it back) instead of losing it. Each call has its own connection, so a reader blocked
on one key never delays another's.

Both layers use it through :meth:`channels_valkey.sentinel.Shard.blocking_call`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool

logger = logging.getLogger("channels_valkey.sentinel")

#: Seconds between two ``CLIENT UNBLOCK`` attempts while the blocking command has not reached the server yet.
UNBLOCK_RETRY = 0.02

#: What receives the reply of a call whose caller was cancelled (it must put the popped data back).
OnInterrupted = Callable[[object], Awaitable[None]]


class InterruptibleCalls:
    """Blocking commands on connections of ``pool``, safe to cancel; ``control`` sends the unblock."""

    def __init__(self, pool: ConnectionPool, control: avalkey.Valkey) -> None:
        self._pool = pool
        self._control = control
        # The server's id of each pooled connection: asked once per connection (and again after it reconnects);
        # False where the ACL refuses CLIENT ID.
        self._ids: weakref.WeakKeyDictionary[AbstractConnection, int | bool] = weakref.WeakKeyDictionary()

    async def call(self, args: Sequence[object], on_interrupted: OnInterrupted) -> object:
        """The raw reply of the blocking command ``args``.

        If the caller is cancelled, the reply the server sends meanwhile (when it is not empty) is passed to
        ``on_interrupted`` before the cancellation goes on.
        """
        connection = await self._pool.get_connection(str(args[0]))
        try:
            client_id = await self._client_id(connection)
            running = asyncio.ensure_future(_command(connection, *args))
            running.add_done_callback(_retrieve)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # Shielded too: a second cancellation (a closing loop insists) must not drop what was popped.
                interrupting = asyncio.ensure_future(self._interrupt(running, client_id, on_interrupted))
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
        self, running: asyncio.Future[object], client_id: int | bool, on_interrupted: OnInterrupted
    ) -> None:
        # The unblock can reach the server before the blocking command does (it travels on another connection),
        # and then unblocks nothing: repeat it until the command has ended.
        while client_id and not running.done():
            try:
                if await self._control.client_unblock(int(client_id)):
                    break
            except (valkey_errors.ValkeyError, OSError):
                break
            await asyncio.wait({running}, timeout=UNBLOCK_RETRY)
        try:
            reply = await running
        except (valkey_errors.ValkeyError, OSError):
            return
        if reply:
            await on_interrupted(reply)


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
