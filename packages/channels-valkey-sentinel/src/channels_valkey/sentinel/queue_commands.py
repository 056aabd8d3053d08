"""Popping from and putting back into a sorted-set queue (score = send time), as both layers' readers do.

A pop takes up to ``count`` of the oldest members in one ``BZMPOP`` round trip. Where that is refused (an ACL
written for channels-valkey 0.3, or a server older than 7.0) the shard's facts say so and the pop becomes
``BZPOPMIN`` for the first member and ``ZPOPMIN`` for the rest. A pop cut short by a cancellation hands what the
server popped meanwhile to ``on_interrupted`` (see :class:`~channels_valkey.sentinel.InterruptibleCalls`), and
putting back re-adds members with their original scores, so they go back to the head of the queue in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.blocking import bzpopmin_entry

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionManager

logger = logging.getLogger("channels_valkey.sentinel")

#: A queue member and its score (the send time), as popped.
Entry = tuple[bytes, float]
#: Receives what a cancelled pop had taken, to put it back.
OnPopped = Callable[[list[Entry]], Awaitable[None]]


async def blocking_pop(
    connections: ConnectionManager,
    shard: int,
    key: str,
    timeout: float,
    count: int,
    on_interrupted: OnPopped,
) -> list[Entry]:
    """Up to ``count`` members of ``key``, oldest first, waiting up to ``timeout`` seconds for the first."""
    server = await connections.shard(shard)
    facts = connections.facts(shard)
    if not facts.bzmpop_refused:

        async def put_back_batch(reply: object) -> None:
            await on_interrupted(bzmpop_entries(reply))

        try:
            reply = await server.blocking_call(
                ("BZMPOP", timeout, 1, key, "MIN", "COUNT", count), put_back_batch
            )
            return bzmpop_entries(reply)
        except valkey_errors.ResponseError as error:
            if "bzmpop" not in str(error).lower():
                raise
            logger.info("shard %d refuses BZMPOP (%s); using BZPOPMIN from now on", shard, error)
            facts.bzmpop_refused = True

    async def put_back_one(reply: object) -> None:
        await on_interrupted(bzpopmin_entries(reply))

    entries = bzpopmin_entries(await server.blocking_call(("BZPOPMIN", key, timeout), put_back_one))
    if entries and count > 1:
        entries += await _pop_rest(connections, shard, key, count - 1, entries, on_interrupted)
    return entries


async def _pop_rest(
    connections: ConnectionManager,
    shard: int,
    key: str,
    count: int,
    taken: list[Entry],
    on_interrupted: OnPopped,
) -> list[Entry]:
    """``ZPOPMIN key count`` after a ``BZPOPMIN`` took ``taken``; a cancellation hands both to ``on_interrupted``.

    The pop runs on as a task of its own when its caller is cancelled (a loop closing, ``close_pools()``), so what
    the server popped is not lost with the caller: once its reply is in, it goes back with ``taken``.
    """
    rest = asyncio.ensure_future(connections.execute_command(shard, "ZPOPMIN", key, count, idempotent=False))
    try:
        return zpopmin_entries(await asyncio.shield(rest))
    except asyncio.CancelledError:
        await asyncio.shield(_give_back(taken, rest, on_interrupted))
        raise


async def _give_back(taken: list[Entry], rest: asyncio.Future[Any], on_interrupted: OnPopped) -> None:
    popped = list(taken)
    try:
        popped += zpopmin_entries(await rest)
    except Exception as error:  # it popped nothing, or its reply is lost and what it carried with it
        logger.info("popping the rest of %d entries failed while putting them back: %s", len(taken), error)
    await on_interrupted(popped)


async def requeue(connections: ConnectionManager, shard: int, key: str, entries: list[Entry]) -> None:
    """Put popped ``entries`` back at the head of ``key`` (their original scores keep the order)."""
    await connections.execute_command(shard, "ZADD", key, *score_member_pairs(entries), idempotent=True)


def score_member_pairs(entries: list[Entry]) -> list[object]:
    """``entries`` as ``ZADD`` takes them: score, member, score, member... (the scores as exact text)."""
    return [part for member, score in entries for part in (repr(score), member)]


def bzmpop_entries(reply: object) -> list[Entry]:
    """The (member, score) pairs of a ``BZMPOP`` reply (``[key, [[member, score], ...]]``; empty on timeout)."""
    if not reply:
        return []
    if not isinstance(reply, list | tuple) or len(reply) != 2 or not isinstance(reply[1], list | tuple):
        raise valkey_errors.DataError(f"unexpected BZMPOP reply {reply!r}")
    return [(bytes(member), float(score)) for member, score in reply[1]]


def zpopmin_entries(reply: object) -> list[Entry]:
    """The (member, score) pairs of a raw ``ZPOPMIN key count`` reply: flat in RESP2, pairs in RESP3."""
    if not isinstance(reply, list | tuple):
        raise valkey_errors.DataError(f"unexpected ZPOPMIN reply {reply!r}")
    if reply and isinstance(reply[0], list | tuple):
        return [(bytes(member), float(score)) for member, score in reply]
    return [(bytes(member), float(score)) for member, score in zip(reply[::2], reply[1::2], strict=True)]


def bzpopmin_entries(reply: object) -> list[Entry]:
    """The entry of a ``BZPOPMIN`` reply as a list (empty on timeout), like a batch of ``BZMPOP``."""
    entry = bzpopmin_entry(reply)
    return [] if entry is None else [entry]
