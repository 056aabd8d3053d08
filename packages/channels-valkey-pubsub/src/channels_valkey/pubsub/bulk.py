"""``send_many`` and ``group_send_many`` of the Pub/Sub layer: many messages in a few round trips per shard.

Each message goes where its single call would send it, in the same bytes. Worker channels' messages are queued by
one script call per shard (per slot on a cluster) and chunk of :data:`~channels_valkey.pubsub.scripts.BULK_CHUNK`;
published messages (process channels, groups, worker channels that travel on Pub/Sub) by one script call per shard
and chunk that publishes them in order (a pipeline of ``PUBLISH`` commands where the ACL refuses scripts). On a
Valkey Cluster each message is an ``SPUBLISH`` of its own through the handover logic (``handover.py``), the messages
of one name one after another and names at once. Shards work at once (see ``channels_valkey.sentinel.bulk``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from valkey import exceptions as valkey_errors

from channels_valkey.pubsub import scripts
from channels_valkey.pubsub.names import group_channel
from channels_valkey.sentinel import (
    GroupSendManyResult,
    SendManyResult,
    ShardUnavailable,
    check_channel,
    check_group,
    checked_pairs,
    pipelined,
    raise_if_reply_lost,
    run_batches,
    slot_of,
)

if TYPE_CHECKING:
    from channels_valkey.pubsub.worker_queues import WorkerQueues
    from channels_valkey.sentinel import ConnectionManager, MessageCounts, SyncLayer

logger = logging.getLogger("channels_valkey.pubsub")

#: Sent messages, each with 1 (queued or published) or 0 (its queue was full), and the first failure.
_Outcome = tuple[list[tuple["_Message", int]], BaseException | None]


class _Message(NamedTuple):
    """One message of a bulk call: which pair it came from, the Pub/Sub name or channel, its kind and bytes."""

    pair: int
    name: str
    kind: str
    payload: bytes


class BulkSends:
    """The layer's bulk sends, mixed into :class:`~channels_valkey.pubsub.ValkeyPubSubChannelLayer`."""

    if TYPE_CHECKING:
        prefix: str
        cluster: bool
        _connections: ConnectionManager
        _counts: MessageCounts
        _queues: WorkerQueues

        def get_capacity(self, channel: str) -> int: ...
        def _payload(self, message: dict[str, Any], kind: str, name: str) -> bytes: ...
        def _hand_off_to(self) -> SyncLayer | None: ...
        def _payloads(self, pairs: Sequence[tuple[str, dict[str, Any]]], kind: str) -> list[bytes]: ...
        def _kind(self, channel: str) -> str: ...
        def _is_worker(self, channel: str, kind: str | None = None) -> bool: ...
        async def _publish(self, shard: int, name: str, payload: bytes) -> None: ...

    async def send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> SendManyResult:
        """Send each ``(channel, message)`` as :meth:`send` would, in a few round trips per shard.

        Every pair is checked first: a bad channel name or message anywhere raises, naming the pair, and nothing
        is sent. A worker channel at capacity does not raise ``ChannelFull`` (the other messages went out): its
        pairs come back in the result's ``full``. A channel's messages go out in the order given. A connection
        lost after the messages were written raises ``ReplyLost``: they are never sent twice.
        """
        if (sync := self._hand_off_to()) is not None:
            return await sync.hand_off(BulkSends.send_many(self, pairs))
        checked = checked_pairs(pairs, check_channel, "send_many")
        ring = await self._connections.ring()
        queued: dict[tuple[int, int], list[_Message]] = defaultdict(list)
        published: dict[int, list[_Message]] = defaultdict(list)
        for index, (channel, message) in enumerate(checked):
            shard = ring.index(channel)
            kind = self._kind(channel)
            item = _Message(index, channel, kind, self._payload(message, "channel", channel))
            if self._is_worker(channel, kind) and self._queues.enabled(shard):
                queued[shard, slot_of(self._queues.key(channel)) if self.cluster else 0].append(item)
            else:
                published[shard].append(item)
        (in_queues, queue_error), (out, publish_error) = await asyncio.gather(
            self._enqueue(queued), self._publish_many(published)
        )
        full: list[int] = []
        for done, added in [*in_queues, *out]:
            if added:
                self._counts.sent[done.kind] += 1
            else:
                full.append(done.pair)
        sent_count = len(in_queues) + len(out) - len(full)
        error = queue_error or publish_error
        if error is not None:
            raise_if_reply_lost(error, f"send_many ({sent_count} of {len(checked)} messages sent)")
            raise error
        return SendManyResult(sent_count, tuple(checked[index] for index in sorted(full)))

    async def group_send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> GroupSendManyResult:
        """Publish each ``(group, message)`` as :meth:`group_send` would, in one script call per shard and chunk.

        Every pair is checked first, as in :meth:`send_many`. Groups travel on Pub/Sub, so no member is ever
        over capacity here: the result's ``over_capacity`` is always empty.
        """
        if (sync := self._hand_off_to()) is not None:
            return await sync.hand_off(BulkSends.group_send_many(self, pairs))
        checked = checked_pairs(pairs, check_group, "group_send_many")
        payloads = self._payloads(checked, "group")
        ring = await self._connections.ring()
        head = group_channel(self.prefix, "")  # every group's Pub/Sub name is head + group (names.py)
        if self.cluster:
            published: dict[int, list[_Message]] = defaultdict(list)
            for index, ((group, _), payload) in enumerate(zip(checked, payloads, strict=True)):
                name = head + group
                published[ring.index(name)].append(_Message(index, name, "group", payload))
            done, error = await self._publish_many(published)
            sent = len(done)
        else:
            # The script's arguments straight away, name and payload after name and payload, a list per shard:
            # at a few microseconds a message, an object per message would be a good part of the call.
            by_shard: dict[int, list[str | bytes]] = defaultdict(list)
            for (group, _), payload in zip(checked, payloads, strict=True):
                name = head + group
                args = by_shard[ring.index(name)]
                args.append(name)
                args.append(payload)
            step = 2 * scripts.BULK_CHUNK
            chunks = {
                shard: [args[start : start + step] for start in range(0, len(args), step)]
                for shard, args in by_shard.items()
            }

            async def publish(shard: int, chunk: Sequence[list[str | bytes]]) -> list[int]:
                counts = []
                for args in chunk:
                    await self._publish_in_order(shard, args)
                    counts.append(len(args) // 2)
                return counts

            published_chunks, error = await run_batches(chunks, publish, 1)
            sent = sum(count for _, count in published_chunks)
        self._counts.sent["group"] += sent
        if error is not None:
            raise_if_reply_lost(error, f"group_send_many ({sent} of {len(checked)} group sends made)")
            raise error
        return GroupSendManyResult(sent)

    async def _enqueue(self, batches: Mapping[tuple[int, int], list[_Message]]) -> _Outcome:
        """Queue every batch's messages on worker queues by script: 1 queued or 0 full for each."""
        everything = [message for messages in batches.values() for message in messages]
        scores = dict(
            zip(
                everything,
                self._queues.clock.spread([self._queues.key(message.name) for message in everything]),
                strict=True,
            )
        )

        async def send(place: tuple[int, int], chunk: Sequence[_Message]) -> list[int]:
            shard = place[0]
            added = await self._queues.enqueue_many(
                shard,
                [message.name for message in chunk],
                [message.payload for message in chunk],
                [self.get_capacity(message.name) for message in chunk],
                [scores[message] for message in chunk],
            )
            if added is not None:
                return added
            for message in chunk:  # the ACL refuses queues on this shard: published, as send falls back
                await self._publish(shard, message.name, message.payload)
            return [1] * len(chunk)

        return await run_batches(batches, send, scripts.BULK_CHUNK)

    async def _publish_many(self, by_shard: Mapping[int, list[_Message]]) -> _Outcome:
        """Publish every shard's messages: one script call per chunk, or on a cluster one ``SPUBLISH`` each."""
        if not self.cluster:

            async def write(shard: int, chunk: Sequence[_Message]) -> list[int]:
                await self._publish_in_order(
                    shard, [part for message in chunk for part in (message.name, message.payload)]
                )
                return [1] * len(chunk)

            return await run_batches(by_shard, write, scripts.BULK_CHUNK)
        # A name's messages one after another (each SPUBLISH may be published again during a slot handover).
        by_name: dict[tuple[int, str], list[_Message]] = defaultdict(list)
        for shard, messages in by_shard.items():
            for message in messages:
                by_name[shard, message.name].append(message)

        async def publish(place: tuple[int, str], chunk: Sequence[_Message]) -> list[int]:
            shard = place[0]
            for message in chunk:
                await self._publish(shard, message.name, message.payload)
            return [1] * len(chunk)

        return await run_batches(by_name, publish, 1)

    async def _publish_in_order(self, shard: int, args: list[str | bytes]) -> None:
        """``PUBLISH`` each name and payload of ``args`` (name, payload, name, payload...) on ``shard``, in order:
        one script call, or a pipeline of ``PUBLISH`` commands where the ACL refuses scripts (not on a cluster)."""
        facts = self._connections.facts(shard)
        if not facts.scripts_refused:
            try:
                # Not idempotent: a retried publish whose reply was lost would deliver twice.
                await scripts.PUBLISH_MANY_SCRIPT.run(self._connections, shard, [], args, idempotent=False)
                return
            except ShardUnavailable as error:
                if not isinstance(error.cause, valkey_errors.NoPermissionError):
                    raise
                facts.scripts_refused = True  # refused before it ran: nothing was published
                logger.info("shard %d refuses scripts (%s); bulk publishes go as a pipeline", shard, error)
        commands = [("PUBLISH", args[index], args[index + 1]) for index in range(0, len(args), 2)]
        await pipelined(self._connections, shard, commands)
