"""``ValkeyChannelLayer``: the channel layer on sorted-set queues, a drop-in for channels-valkey 0.3.

Settings, keys and bytes on the server are those of channels-valkey 0.3 and channels_redis 4, so both can run side
by side on one server: a channel's queue is ``{prefix}{channel}``, every ``name!suffix`` process channel of a process
shares the queue ``{prefix}name!``, and a group is ``{prefix}:group:{group}`` (see ``queue_key`` and ``group_key``).
What differs is how the work is done: ``send`` is one script call, receiving goes through readers that cannot lose
a message to a cancelled receive (receiver.py), ``group_send`` makes one call per shard touched, shards in
parallel, ``send_many`` / ``group_send_many`` send many messages in a few calls per shard (bulk.py), and ``flush``
never uses ``KEYS`` when ``SCAN`` is allowed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from valkey import exceptions as valkey_errors

from channels_valkey.core import scripts
from channels_valkey.core.bulk import BulkSends
from channels_valkey.core.exceptions import ForeignChannelError
from channels_valkey.core.inbox import ProcessInbox
from channels_valkey.core.receiver import LoopReceiver
from channels_valkey.core.rotation import SendRotation, refused_before_running
from channels_valkey.sentinel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConnectionManager,
    DropCounters,
    HealthReport,
    LayerOptions,
    MessageCodec,
    MessageCounts,
    QueueSource,
    ResiliencePolicy,
    ScoreClock,
    SerializerMethods,
    ShardRing,
    SyncLayerAccess,
    check_channel,
    check_group,
    check_health,
    check_message,
    delete_prefixed,
    every_result,
    is_process_channel,
    layer_stats,
    non_local_name,
    observe,
    raise_if_reply_lost,
    slot_of,
)
from channels_valkey.serializers import registry

logger = logging.getLogger("channels_valkey.core")

#: One queue of a group_send: its key, the message as stored there, and the queue's capacity.
_Target = tuple[str, bytes, int]


#: Why a prefix on a Valkey Cluster may hold no brace (for the error saying so).
_BRACES = "the layer puts each channel and group name in braces (a hash tag) to keep the keys of one call in one slot"


class ValkeyChannelLayer(BulkSends, SerializerMethods, SyncLayerAccess, BaseChannelLayer):  # type: ignore[misc]
    """The Valkey channel layer on sorted sets: queues with capacity and expiry, groups, flush.

    Every argument is the channels-valkey 0.3 setting of the same name; ``policy`` adds the connection timeouts
    and retries of :class:`channels_valkey.sentinel.ResiliencePolicy`, ``max_message_bytes`` the largest
    serialized message a send accepts (None: no limit).
    """

    brpop_timeout = 5
    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "asgi",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[Any, int] | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        policy: ResiliencePolicy | None = None,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        options = LayerOptions.check(
            hosts,
            prefix,
            expiry,
            group_expiry,
            capacity,
            channel_capacity,
            policy,
            max_message_bytes,
            _BRACES,
        )
        self.prefix = options.prefix
        self.expiry = options.expiry
        self.group_expiry = options.group_expiry
        self.capacity = options.capacity
        self.max_message_bytes = options.max_message_bytes
        self.channel_capacity = self.compile_capacities(options.channel_capacity)
        self.hosts = options.hosts
        #: On a Valkey Cluster every key carries a hash tag, so that each script call touches one slot.
        self.cluster = options.cluster
        # random_prefix_length is checked by the serializer: 0 or less means no prefix, as in 0.3 (two equal
        # messages then share one member of the sorted set, as they did there).
        self._serializer = registry.get_serializer(
            serializer_format,
            random_prefix_length=random_prefix_length,
            expiry=self.expiry,
            symmetric_encryption_keys=symmetric_encryption_keys,
        )
        self.policy = options.policy
        self._connections = ConnectionManager(self.hosts, self.policy, block_seconds=self.brpop_timeout)
        self.client_prefix = uuid.uuid4().hex
        self.counters = DropCounters()
        self._counts = MessageCounts("core")
        # Decoding goes through serialize()/deserialize(), so a subclass overriding them (as 0.3 allowed) is heard.
        self._codec = MessageCodec(self, self.counters, logger)
        #: Normal channels' sends take the shards in turn, passing over one that refuses connections.
        self._rotation = SendRotation(self.policy.backoff_cap)
        #: Queue scores: the send time, never at or below one given before (bulk sends give consecutive ones).
        self._clock = ScoreClock()
        #: What the queue readers need of this layer.
        self._queue_source = QueueSource(
            self._connections,
            self.brpop_timeout,
            self.expiry,
            self.counters,
            self.decode,
            logger,
            waited=self._counts.waited["normal"],
        )
        #: Process-channel messages that reached this process, for a receive on any event loop.
        self._inbox = ProcessInbox(
            self.expiry, self.get_capacity, self.counters, self._counts.waited["process"]
        )
        self._receivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopReceiver] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # Last: a metrics collection on another thread may call stats() from now on.
        observe(self)  # its counts in the OpenTelemetry metrics, where opentelemetry-api is installed

    def __str__(self) -> str:
        return f"{type(self).__name__}(hosts={self.hosts}, prefix={self.prefix!r})"

    # Naming ------------------------------------------------------------------------------------------------------

    @property
    def ring_size(self) -> int:
        """The number of shards (as in 0.3); RuntimeError while a ``services: []`` entry is not discovered yet."""
        return self._connections.ring_now().size

    def consistent_hash(self, value: str | bytes) -> int:
        """The shard of a name, placed as channels-valkey 0.3 places it.

        RuntimeError while a ``services: []`` entry is not discovered yet: any awaited call of the layer does it.
        """
        return self._connections.ring_now().index(value)

    def queue_key(self, channel: str) -> str:
        """The server key of ``channel``'s queue (shared by every ``name!...`` channel of one process)."""
        if self.cluster:
            return f"{self.prefix}{{{non_local_name(channel)}}}"
        return self.prefix + non_local_name(channel)

    def group_key(self, group: str) -> str:
        """The server key of ``group``'s member set."""
        if self.cluster:
            return f"{self.prefix}:group:{{{group}}}"
        return f"{self.prefix}:group:{group}"

    async def shard_ring(self) -> ShardRing:
        """The ring placing names on shards; the first call asks the Sentinels of a ``services: []`` entry for
        their primaries (one shard each), which :meth:`consistent_hash` cannot wait for."""
        return await self._connections.ring()

    async def _shard_of_group(self, group: str) -> int:
        return (await self.shard_ring()).index(group)

    @staticmethod
    def _shard_of_channel(ring: ShardRing, channel: str) -> int:
        # Process channels live on the shard of their "name!" part, wherever they are sent from (the peers
        # hash the full name on send but the "name!" part on receive, which loses messages when sharded).
        return ring.index(non_local_name(channel))

    @property
    def queue_key_layout(self) -> tuple[str, str]:
        """``(head, tail)``: every key :meth:`queue_key` makes is ``head + name + tail`` (``name`` being a process
        channel's ``name!`` part), so tools can find queues by ``SCAN MATCH head*`` and read names back from keys."""
        return (self.prefix + "{", "}") if self.cluster else (self.prefix, "")

    @property
    def group_key_layout(self) -> tuple[str, str]:
        """``(head, tail)``: every key :meth:`group_key` makes is ``head + group + tail``; outside a cluster a group
        key also fits :attr:`queue_key_layout`, so a tool reading keys back tries this layout first."""
        return (f"{self.prefix}:group:{{", "}") if self.cluster else (f"{self.prefix}:group:", "")

    # Serialization -----------------------------------------------------------------------------------------------

    def decode(self, member: bytes) -> dict[str, Any] | None:
        """A popped message, or None (logged and counted) when it cannot be read."""
        return self._codec.decode(member)

    # Sending -----------------------------------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ChannelFull when its queue is at capacity."""
        if (sync := self._hand_off_to()) is not None:
            await sync.hand_off(ValkeyChannelLayer.send(self, channel, message))
            return
        check_channel(channel)
        check_message(message)
        process = is_process_channel(channel)
        if process:
            message = {**message, "__asgi_channel__": channel}
        # Encoded before anything else: a message over max_message_bytes raises before a byte goes anywhere.
        member = self._payload(message, "channel", channel)
        ring = await self.shard_ring()
        keys = [self.queue_key(channel)]
        args = [repr(self._clock.take()), int(self.expiry), self.get_capacity(channel), member]
        try:
            if process:
                # Not idempotent: a receiver may take the message before a lost reply is noticed, and a second
                # call would then queue it again. Only calls refused before they ran are retried.
                added = await scripts.SEND_SCRIPT.run(
                    self._connections, self._shard_of_channel(ring, channel), keys, args, idempotent=False
                )
            else:
                added = await self._send_normal(ring.size, keys, args)
        except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
            raise_if_reply_lost(error, f"send to {channel!r}")
            raise
        if not added:
            raise ChannelFull(f"channel {channel!r} is at capacity ({self.get_capacity(channel)})")
        self._counts.sent["process" if process else "normal"] += 1

    async def _send_normal(self, size: int, keys: list[str], args: list[Any]) -> Any:
        """Queue a normal channel's message on the shard in turn, or on the next when that one refuses (it cannot
        have run there, so the message is not sent twice); the last shard tried gets the policy's retries."""
        shards = self._rotation.order(size)
        for shard in shards[:-1]:
            try:
                added = await scripts.SEND_SCRIPT.run(
                    self._connections, shard, keys, args, idempotent=False, retry=False
                )
            except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
                if not refused_before_running(error):
                    raise
                self._rotation.refused(shard)
                logger.info(
                    "shard %d refused a send (%s); normal channels' sends pass it over for %.2fs",
                    shard,
                    error,
                    self._rotation.pause,
                )
                continue
            self._rotation.answered(shard)
            return added
        return await scripts.SEND_SCRIPT.run(self._connections, shards[-1], keys, args, idempotent=False)

    # Receiving ---------------------------------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``; cancelling the wait never loses a message.

        A process channel must be one of this instance's (made by :meth:`new_channel`): its messages travel in a
        queue only this instance reads. Any other raises :class:`ForeignChannelError` (an ``AssertionError``, as
        channels-valkey 0.3 raised) before anything is read.
        """
        check_channel(channel)
        process = is_process_channel(channel)
        if process and not non_local_name(channel).endswith(self.client_prefix + "!"):
            raise ForeignChannelError(channel, self.client_prefix)
        ring = await self.shard_ring()
        receiver = self._receiver()
        key = self.queue_key(channel)
        if process:
            message = await receiver.receive_process(channel, self._shard_of_channel(ring, channel), key)
            self._counts.received["process"] += 1
            return message
        message = await receiver.receive_normal([receiver.reader(shard, key) for shard in range(ring.size)])
        self._counts.received["normal"] += 1
        return message

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process channel name, received by this process only."""
        channel = f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"
        check_channel(channel)
        return channel

    def _receiver(self) -> LoopReceiver:
        loop = asyncio.get_running_loop()
        with self._lock:
            receiver = self._receivers.get(loop)
            if receiver is None:
                receiver = self._receivers[loop] = LoopReceiver(self._queue_source, self._inbox)
        return receiver

    # Groups ------------------------------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        check_group(group)
        check_channel(channel)
        args = [repr(time.time()), channel, int(self.group_expiry)]
        await scripts.GROUP_ADD_SCRIPT.run(
            self._connections,
            await self._shard_of_group(group),
            [self.group_key(group)],
            args,
            idempotent=True,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        check_group(group)
        check_channel(channel)
        await self._connections.execute_command(
            await self._shard_of_group(group), "ZREM", self.group_key(group), channel, idempotent=True
        )

    async def group_channels(self, group: str) -> list[str]:
        """The channels in ``group`` now (members older than ``group_expiry`` are removed first)."""
        check_group(group)
        shard, key = await self._shard_of_group(group), self.group_key(group)
        cutoff = repr(time.time() - self.group_expiry)
        members = await scripts.GROUP_MEMBERS_SCRIPT.run(
            self._connections, shard, [key], [cutoff, scripts.MEMBERS_IN_SCRIPT], idempotent=True
        )
        if members is None:  # a large group: read without a script's reply, which costs the server far more
            members = await self._connections.execute_command(shard, "ZRANGE", key, 0, -1, idempotent=True)
        return [member.decode() for member in members]

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every channel of ``group``; full queues drop it (counted and logged)."""
        if (sync := self._hand_off_to()) is not None:
            await sync.hand_off(ValkeyChannelLayer.group_send(self, group, message))
            return
        check_group(group)
        check_message(message)
        # Encoded before the members are read: a message over max_message_bytes raises before anything is written.
        # Normal channels' queues all store these bytes (distinct queues need no distinct random prefixes).
        plain = self._payload(message, "group", group)
        channels = await self.group_channels(group)
        ring = await self.shard_ring()
        # One queue key per destination; process channels of one process share theirs and one message names them all.
        by_key: dict[str, list[str]] = defaultdict(list)
        for channel in channels:
            by_key[self.queue_key(channel)].append(channel)
        # One script call per shard, or per slot on a cluster (a script's keys must share a slot there), and
        # per MAX_KEYS_PER_CALL keys; all at once: calls to one server pipeline on its lane.
        batches: dict[tuple[int, int], list[_Target]] = defaultdict(list)
        for key, names in by_key.items():
            first = names[0]
            member = plain
            if is_process_channel(first):
                member = self._payload({**message, "__asgi_channel__": names}, "group", group)
            place = (self._shard_of_channel(ring, first), slot_of(key) if self.cluster else 0)
            batches[place].append((key, member, self.get_capacity(first)))
        now = repr(time.time())
        calls = [
            self._group_send_batch(shard, now, targets[start : start + scripts.MAX_KEYS_PER_CALL])
            for (shard, _), targets in batches.items()
            for start in range(0, len(targets), scripts.MAX_KEYS_PER_CALL)
        ]
        try:
            # One call (a group on one server) is awaited as it is: gather would add a task for nothing.
            dropped = await calls[0] if len(calls) == 1 else sum(await every_result(calls))
        except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
            raise_if_reply_lost(error, f"group_send to {group!r}")
            raise
        self._counts.sent["group"] += 1
        self._counts.fanout.record(len(channels))
        if dropped:
            self.counters.group_over_capacity += dropped
            # Worded as channels-valkey 0.3 words it: log-based alerts keep matching after an upgrade.
            logger.info("%d of %d channels over capacity in group %s", dropped, len(by_key), group)

    async def _group_send_batch(self, shard: int, now: str, batch: list[_Target]) -> int:
        keys = [key for key, _, _ in batch]
        args = [now, int(self.expiry), *(cap for _, _, cap in batch), *(member for _, member, _ in batch)]
        # Not idempotent: each member carries a fresh random prefix, so a retry after a lost reply could
        # deliver twice. Only calls refused before they ran are retried.
        return int(
            await scripts.GROUP_SEND_SCRIPT.run(self._connections, shard, keys, args, idempotent=False)
        )

    # Flush and close ---------------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key of this prefix on every shard and the messages held locally; receives waiting now keep
        waiting, and the layer stays usable."""
        self._inbox.clear()
        receiver = self._receivers.get(asyncio.get_running_loop())
        if receiver is not None:
            receiver.drop_messages()
        for shard in range((await self.shard_ring()).size):
            for server in await self._connections.primaries(shard):
                await self._connections.execute_on(
                    server,
                    lambda client: delete_prefixed(client, self.prefix, one_slot_per_call=self.cluster),
                    idempotent=True,
                )

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of this instance's counts: messages sent and received by kind, dropped by
        reason (``counters``), and held in this process now, not yet received (see ``channels_valkey.sentinel.
        layer_stats``)."""
        with self._lock:
            receivers = list(self._receivers.values())
        held = {"normal": sum(receiver.held() for receiver in receivers), "process": self._inbox.held()}
        return layer_stats(self._counts, self.counters, held, self._connections.connection_figures())

    async def health(self, timeout: float = 1.0) -> HealthReport:
        """Whether every primary of the layer is reachable and answering as a primary, asked at once and answered
        within ``timeout`` seconds; never raises for a server that is down (see ``channels_valkey.sentinel.health``)."""
        return await check_health(self._connections, timeout=timeout)

    async def close_pools(self) -> None:
        """Close this event loop's readers and connections (they reopen on next use); from a loop ``async_to_sync``
        made for one call, those its sends were handed to as well."""
        await self._close_handed_off()
        await self._close_receiver()
        await self._connections.close()

    async def wait_received(self) -> None:
        """Wait for what follows the receives on this loop: readers clearing their receipts (about 50 ms after the
        last receive) and process-queue readers ending their linger. 0.3 waited here for its in-flight backups."""
        with self._lock:
            receiver = self._receivers.get(asyncio.get_running_loop())
        if receiver is not None:
            await receiver.settled()

    async def _close_receiver(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            receiver = self._receivers.pop(loop, None)
        if receiver is not None:
            await receiver.aclose()
