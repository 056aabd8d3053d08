"""``send_many`` and ``group_send_many`` of the core layer: many messages in a few script calls per shard.

Each message goes where its single call would put it, in the same bytes, with the same capacity and expiry. The
messages are grouped by shard (and by slot on a cluster, where one script's keys must share a slot) and each group
is sent :data:`~channels_valkey.core.scripts.BULK_CHUNK` at a time by one script call, which answers for each
message whether it was queued; shards work at once (see ``channels_valkey.sentinel.bulk``). A group_send_many first
reads the members of all its groups, one script call per shard and chunk of groups, all written at once; it builds
each chunk's copies as its read arrives, while the server reads the next chunks, and queues them once all are built
(so that a copy over ``max_message_bytes`` raises before anything is written).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from channels_valkey.core import scripts
from channels_valkey.core.groups import GroupMethods, QueueOf
from channels_valkey.sentinel import (
    GroupSendManyResult,
    SendManyResult,
    ShardRing,
    check_channel,
    check_group,
    checked_pairs,
    is_process_channel,
    raise_if_reply_lost,
    run_batches,
    slot_of,
)

logger = logging.getLogger("channels_valkey.core")

#: Where a script call goes: (shard, slot on a cluster, else 0).
_Place = tuple[int, int]
#: The read of one chunk of groups' members: each group of the chunk with its member channels.
_MemberRead = asyncio.Future[dict[str, list[str]]]


class _Queued:
    """One message for one queue: where it goes, its bytes and capacity, and which pair of the call it came from."""

    __slots__ = ("capacity", "key", "member", "names", "pair", "score")

    def __init__(self, key: str, capacity: int, member: bytes, pair: int, names: list[str]) -> None:
        self.key = key
        self.capacity = capacity
        self.member = member
        self.pair = pair
        #: The channels this copy is for (several process channels of one process share their queue).
        self.names = names
        self.score = 0.0


class BulkSends(GroupMethods):
    """The layer's bulk sends, mixed into :class:`~channels_valkey.core.ValkeyChannelLayer`; on the group methods,
    whose copies of a group message ``group_send_many`` makes as ``group_send`` does."""

    async def send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> SendManyResult:
        """Send each ``(channel, message)`` as :meth:`send` would, in a few script calls per shard.

        Every pair is checked first: a bad channel name or message anywhere raises, naming the pair, and nothing
        is sent. A channel at capacity does not raise ``ChannelFull`` (the other messages went out): its pairs
        come back in the result's ``full``. A channel's messages are queued in the order given (a normal channel's
        on one shard per call). A connection lost after the messages were written raises ``ReplyLost``: they are
        never sent twice.
        """
        if (sync := self._hand_off_to()) is not None:
            return await sync.hand_off(BulkSends.send_many(self, pairs))
        checked = checked_pairs(pairs, check_channel, "send_many")
        ring = await self.shard_ring()
        batches: dict[_Place, list[_Queued]] = defaultdict(list)
        normal_shards: dict[str, int] = {}
        for index, (channel, message) in enumerate(checked):
            if is_process_channel(channel):
                message = {**message, "__asgi_channel__": channel}
                shard = self._shard_of_channel(ring, channel)
            else:
                # All of one channel's messages on one shard, so they are received in order; channels in turns.
                shard = normal_shards.get(channel, -1)
                if shard < 0:
                    shard = normal_shards[channel] = self._rotation.next(ring.size)
            key = self.queue_key(channel)
            member = self._payload(message, "channel", channel)
            queued = _Queued(key, self.get_capacity(channel), member, index, [channel])
            batches[shard, slot_of(key) if self.cluster else 0].append(queued)
        done, error = await self._queue(batches)
        full: list[int] = []
        for queued, added in done:
            if added:
                self._counts.sent["process" if is_process_channel(queued.names[0]) else "normal"] += 1
            else:
                full.append(queued.pair)
        if error is not None:
            raise_if_reply_lost(
                error, f"send_many ({len(done) - len(full)} of {len(checked)} messages queued)"
            )
            raise error
        return SendManyResult(len(done) - len(full), tuple(checked[index] for index in sorted(full)))

    async def group_send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> GroupSendManyResult:
        """Send each ``(group, message)`` as :meth:`group_send` would, in a few script calls per shard.

        Every pair is checked first, as in :meth:`send_many`. The members of every group are read first (one
        script call per shard and chunk of groups), then the messages are queued; a member whose queue is full
        misses the message, counted and logged as ``group_send`` does, and is listed by group in the result's
        ``over_capacity``.
        """
        if (sync := self._hand_off_to()) is not None:
            return await sync.hand_off(BulkSends.group_send_many(self, pairs))
        checked = checked_pairs(pairs, check_group, "group_send_many")
        # Encoded before the members are read: a message over max_message_bytes raises before anything is written.
        plain = [self._payload(message, "group", group) for group, message in checked]
        ring = await self.shard_ring()
        reads = self._start_member_reads(ring, list(dict.fromkeys(group for group, _ in checked)))
        batches: dict[_Place, list[_Queued]] = defaultdict(list)
        queues_per_pair: list[int] = []
        queues: dict[str, QueueOf] = {}
        try:
            for index, (group, message) in enumerate(checked):
                members = (await reads[group])[group]
                copies = self._copies(ring, group, message, plain[index], members, queues)
                queues_per_pair.append(len(copies))
                for place, key, names, member, capacity in copies:
                    batches[place].append(_Queued(key, capacity, member, index, names))
        finally:
            await _settled(reads.values())
        done, error = await self._queue(batches)
        missed: dict[int, list[str]] = defaultdict(list)
        dropped: Counter[int] = Counter()
        answered: Counter[int] = Counter()
        for queued, added in done:
            answered[queued.pair] += 1
            if not added:
                missed[queued.pair].extend(queued.names)
                dropped[queued.pair] += 1
        self.counters.group_over_capacity += dropped.total()
        sent = sum(1 for index, queues in enumerate(queues_per_pair) if answered[index] == queues)
        self._counts.sent["group"] += sent
        over_capacity: dict[str, list[str]] = defaultdict(list)
        for index in sorted(missed):
            group = checked[index][0]
            # Worded as group_send words it (and channels-valkey 0.3): log-based alerts match bulk sends too.
            logger.info(
                "%d of %d channels over capacity in group %s", dropped[index], queues_per_pair[index], group
            )
            over_capacity[group].extend(missed[index])
        if error is not None:
            raise_if_reply_lost(error, f"group_send_many ({sent} of {len(checked)} group sends made)")
            raise error
        return GroupSendManyResult(sent, {group: tuple(names) for group, names in over_capacity.items()})

    def _start_member_reads(self, ring: ShardRing, groups: list[str]) -> dict[str, _MemberRead]:
        """Start reading the current members of ``groups``, one script call per shard (slot) and chunk, all at once;
        each group's read, which answers the members of its whole chunk.

        The reads are written together and the copies of the first chunk's messages are built while the server
        reads the next ones: the call waits one read, not all of them one after another.
        """
        places: dict[_Place, list[str]] = defaultdict(list)
        for group in groups:
            key = self.group_key(group)
            places[ring.index(group), slot_of(key) if self.cluster else 0].append(group)
        cutoff = repr(time.time() - self.group_expiry)

        async def read(shard: int, chunk: Sequence[str]) -> dict[str, list[str]]:
            keys = [self.group_key(group) for group in chunk]
            found = await scripts.MANY_GROUPS_MEMBERS_SCRIPT.run(
                self._connections, shard, keys, [cutoff], idempotent=True
            )
            return {
                group: [member.decode() for member in names]
                for group, names in zip(chunk, found, strict=True)
            }

        reads: dict[str, _MemberRead] = {}
        for (shard, _), entries in places.items():
            for start in range(0, len(entries), scripts.BULK_CHUNK):
                chunk = entries[start : start + scripts.BULK_CHUNK]
                task = asyncio.ensure_future(read(shard, chunk))
                reads.update(dict.fromkeys(chunk, task))
        return reads

    async def _queue(
        self, batches: dict[_Place, list[_Queued]]
    ) -> tuple[list[tuple[_Queued, int]], BaseException | None]:
        """Queue every batch's messages by script; each queued message with 1 (added) or 0 (its queue was full)."""
        # Consecutive scores for the messages of one queue: equal scores would order them by their random bytes.
        everything = [queued for entries in batches.values() for queued in entries]
        for queued, score in zip(
            everything, self._clock.spread([queued.key for queued in everything]), strict=True
        ):
            queued.score = score
        first = min((queued.score for queued in everything), default=0.0)
        now, expiry = repr(first), int(self.expiry)

        async def send(place: _Place, chunk: Sequence[_Queued]) -> list[int]:
            args: list[Any] = [now, expiry]
            for queued in chunk:
                args += (repr(queued.score), queued.capacity, queued.member)
            # Not idempotent, as send: a receiver may take a message before a lost reply is noticed, and a
            # second call would queue it again. Only calls refused before they ran are retried.
            return list(
                await scripts.SEND_MANY_SCRIPT.run(
                    self._connections, place[0], [queued.key for queued in chunk], args, idempotent=False
                )
            )

        return await run_batches(batches, send, scripts.BULK_CHUNK)


async def _settled(reads: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the reads still running and wait for them to end, so that none is left behind the call; a read's
    failure counts as seen (the first one met was raised), so that none is logged as never retrieved."""
    ended = set(reads)
    running = [read for read in ended if not read.done()]
    for read in running:
        read.cancel()
    if running:
        await asyncio.wait(running)
    for read in ended:
        if not read.cancelled():
            read.exception()
