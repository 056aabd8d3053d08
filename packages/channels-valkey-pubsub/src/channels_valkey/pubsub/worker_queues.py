"""Worker (normal) channels on sorted-set queues: each message reaches exactly one receiving process.

A normal channel's messages wait in ``{prefix}__worker__{channel}`` (score = send time, member = 12 random bytes +
payload, so equal messages stay distinct). ``send`` is one script call on the shard's command lane; receiving is the
connection package's :class:`~channels_valkey.sentinel.QueueReader`, the core layer's reader, one per channel and
event loop. Where a shard's ACL refuses the queue commands (a user given only what channels-valkey 0.3 needed), that
shard's normal channels fall back to Pub/Sub for good, with one warning, as 0.3 carried them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from valkey import exceptions as valkey_errors

from channels_valkey.pubsub import scripts
from channels_valkey.pubsub.names import worker_queue, worker_queue_layout, worker_queues
from channels_valkey.sentinel import (
    ConnectionManager,
    Distribution,
    DropCounters,
    QueueReader,
    QueueSource,
    ScoreClock,
    ShardUnavailable,
    delete_prefixed,
)

logger = logging.getLogger("channels_valkey.pubsub")

#: Random bytes in front of a worker queue member, so that equal messages stay distinct in the sorted set.
MEMBER_PREFIX = 12


class WorkerQueues:
    """The worker queues of one layer: their keys, sending to them, their readers, the fall-back, deleting them."""

    def __init__(
        self,
        connections: ConnectionManager,
        *,
        prefix: str,
        cluster: bool,
        expiry: int,
        block_seconds: float,
        counters: DropCounters,
        decode: Callable[[str, bytes], dict[str, Any] | None],
        waited: Distribution | None = None,
    ) -> None:
        self._connections = connections
        self.prefix = prefix
        self.cluster = cluster
        self.expiry = expiry
        self._decode = decode
        #: Queue scores: the send time, never at or below one given before (send_many gives consecutive ones).
        self.clock = ScoreClock()
        self._source = QueueSource(
            connections,
            block_seconds,
            expiry,
            counters,
            self._decode_member,
            logger,
            on_refused=self._refused,
            waited=waited,
        )

    # Keys -------------------------------------------------------------------------------------------------------

    def key(self, channel: str) -> str:
        """The server key of the worker queue of the normal channel ``channel``."""
        return worker_queue(self.prefix, channel, cluster=self.cluster)

    @property
    def layout(self) -> tuple[str, str]:
        """``(head, tail)`` around the channel in every queue key."""
        return worker_queue_layout(self.prefix, cluster=self.cluster)

    # Which shards use queues ------------------------------------------------------------------------------------

    def enabled(self, shard: int) -> bool:
        """Whether ``shard``'s normal channels travel on queues (False once its ACL refused the queue commands)."""
        return not self._connections.facts(shard).queues_refused

    def refused_shards(self) -> set[int]:
        """Shards whose normal channels fell back to Pub/Sub."""
        return {index for index, facts in self._connections.known_facts().items() if facts.queues_refused}

    def fall_back(self, shard: int, error: BaseException) -> None:
        """Carry this shard's normal channels on Pub/Sub from now on (its ACL refuses the queue commands)."""
        facts = self._connections.facts(shard)
        if facts.queues_refused:
            return
        facts.queues_refused = True
        logger.warning(
            "shard %d refuses the worker queue commands (%s); its normal channels use Pub/Sub as in "
            "channels-valkey 0.3 (every receiving process gets each message)",
            shard,
            error,
        )

    # Sending and receiving --------------------------------------------------------------------------------------

    async def enqueue(self, shard: int, channel: str, payload: bytes, capacity: int) -> bool:
        """Queue ``payload``; False when the queue is full or the ACL refuses queues here (then: fall back)."""
        member = os.urandom(MEMBER_PREFIX) + payload
        args = [repr(self.clock.take()), self.expiry, capacity, member]
        try:
            # Not idempotent: a receiver may pop the message before a lost reply is noticed, and a second call
            # would then queue it again. Only calls refused before they ran are retried.
            return bool(
                await scripts.SEND_SCRIPT.run(
                    self._connections, shard, [self.key(channel)], args, idempotent=False
                )
            )
        except ShardUnavailable as error:
            if not isinstance(error.cause, valkey_errors.NoPermissionError):
                raise
            self.fall_back(shard, error.cause)
            return False

    async def enqueue_many(
        self,
        shard: int,
        channels: Sequence[str],
        payloads: Sequence[bytes],
        capacities: Sequence[int],
        scores: Sequence[float],
    ) -> list[int] | None:
        """Queue each payload for its channel in one script call (one slot on a cluster), in order, with the
        ``scores`` of :meth:`ScoreClock.spread`; 1 queued or 0 full for each, or None when the ACL refuses queues
        here (then: fall back, as :meth:`enqueue`)."""
        args: list[object] = [repr(min(scores)), self.expiry]
        for payload, capacity, score in zip(payloads, capacities, scores, strict=True):
            args += (repr(score), capacity, os.urandom(MEMBER_PREFIX) + payload)
        keys = [self.key(channel) for channel in channels]
        try:
            # Not idempotent, as enqueue.
            return list(
                await scripts.SEND_MANY_SCRIPT.run(self._connections, shard, keys, args, idempotent=False)
            )
        except ShardUnavailable as error:
            if not isinstance(error.cause, valkey_errors.NoPermissionError):
                raise
            self.fall_back(shard, error.cause)
            return None

    def reader(self, shard: int, channel: str) -> QueueReader:
        """A new reader of ``channel``'s queue on the running event loop."""
        return QueueReader(self._source, shard, self.key(channel))

    def _decode_member(self, member: bytes) -> dict[str, Any] | None:
        return self._decode("a worker queue", member[MEMBER_PREFIX:])

    def _refused(self, shard: int, error: BaseException) -> bool:
        """A reader's error: True (after falling back) when it is the ACL refusing the queue commands."""
        if isinstance(error, ShardUnavailable):
            error = error.cause
        if not isinstance(error, valkey_errors.NoPermissionError):
            return False
        self.fall_back(shard, error)
        return True

    # Flush ------------------------------------------------------------------------------------------------------

    async def delete_all(self) -> None:
        """Delete every worker queue of the prefix, on every primary; skipped where deleting keys is refused."""
        queues = worker_queues(self.prefix)
        for shard in range(len(await self._connections.shards())):
            # Every primary of a cluster: queues are spread over its slots.
            for server in await self._connections.primaries(shard):
                try:
                    await self._connections.execute_on(
                        server,
                        lambda client: delete_prefixed(client, queues, one_slot_per_call=self.cluster),
                        idempotent=True,
                    )
                except ShardUnavailable as error:
                    if not isinstance(error.cause, valkey_errors.NoPermissionError):
                        raise
                    # A user limited to Pub/Sub (as 0.3 needed) has no queues to delete.
                    logger.info(
                        "flush: %s refuses deleting keys (%s); no worker queues deleted",
                        server.describe(),
                        error,
                    )
