"""``ValkeyChannelLayer``: the channel layer on sorted-set queues, a drop-in for channels-valkey 0.3.

Settings, keys and bytes on the server are those of channels-valkey 0.3 and channels_redis 4, so both can run side
by side on one server: a channel's queue is ``{prefix}{channel}``, every ``name!suffix`` process channel of a process
shares the queue ``{prefix}name!``, and a group is ``{prefix}:group:{group}`` (see ``queue_key`` and ``group_key``).
What differs is how the work is done: ``send`` is one script call, receiving goes through readers that cannot lose
a message to a cancelled receive (receiver.py), ``group_send`` is one script call when the group's members are
those it read last, else one more per shard touched, shards in parallel (groups.py), ``send_many`` /
``group_send_many`` send many messages in a few calls per shard (bulk.py), and ``flush`` never uses ``KEYS`` when
``SCAN`` is allowed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from valkey import exceptions as valkey_errors

from channels_valkey.core import scripts
from channels_valkey.core.bulk import BulkSends
from channels_valkey.core.exceptions import ForeignChannelError
from channels_valkey.core.groups import MemberGuesses
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
    PerLoop,
    QueueSource,
    ResiliencePolicy,
    ScoreClock,
    SerializerMethods,
    ShardRing,
    SyncLayerAccess,
    check_channel,
    check_health,
    check_message,
    delete_prefixed,
    is_process_channel,
    layer_stats,
    non_local_name,
    observe,
    raise_if_reply_lost,
)
from channels_valkey.serializers import registry

logger = logging.getLogger("channels_valkey.core")

#: Why a prefix on a Valkey Cluster may hold no brace (for the error saying so).
_TAGS = "the layer puts each channel and group name in braces (a hash tag) to keep the keys of one call in one slot"


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
            hosts, prefix, expiry, group_expiry, capacity, channel_capacity, policy, max_message_bytes, _TAGS
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
        #: The members last read of recent groups, sent with a group_send for the server to check (groups.py).
        self._guesses = MemberGuesses()
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
        #: Each event loop's receiver, made by its first receive.
        self._receivers: PerLoop[LoopReceiver] = PerLoop()
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
        receiver = self._receivers.get(loop)
        if receiver is None:
            with self._lock:
                receiver = self._receivers.get(loop)
                if receiver is None:
                    receiver = self._receivers.put(loop, LoopReceiver(self._queue_source, self._inbox))
        return receiver

    # Flush and close ---------------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key of this prefix on every shard and the messages held locally; receives waiting now keep
        waiting, and the layer stays usable."""
        self._inbox.clear()
        self._guesses.forget()
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
            receiver = self._receivers.pop(loop)
        if receiver is not None:
            await receiver.aclose()
