"""``ValkeyPubSubChannelLayer``: the Pub/Sub channel layer, a drop-in for channels-valkey 0.3's.

Process channels (``name!suffix``) and groups travel on Pub/Sub exactly as in 0.3: one ``PUBLISH`` per send under
the same channel names, with the same payload bytes. Normal (worker) channels default to a queue per channel, so
each message reaches exactly one receiving process as the channels spec requires; ``worker_channels="pubsub"``
keeps 0.3's behaviour (every subscribed process gets it) for fleets that still have 0.3 receivers.

On a Valkey Cluster the same names travel on sharded Pub/Sub: ``SPUBLISH`` to the primary of the name's slot
(``handover.py``), ``SSUBSCRIBE`` there (``cluster_subscriber.py``); worker queues carry their channel as hash tag.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from valkey import exceptions as valkey_errors

from channels_valkey.pubsub.bulk import BulkSends
from channels_valkey.pubsub.handover import ShardedPublisher
from channels_valkey.pubsub.loop_state import Item, LocalChannel, LoopState
from channels_valkey.pubsub.names import ServerNames, group_channel, is_peer_process_channel
from channels_valkey.pubsub.worker_queues import WorkerQueues
from channels_valkey.sentinel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConnectionManager,
    DropCounters,
    Handover,
    HealthReport,
    LayerOptions,
    MessageCodec,
    MessageCounts,
    PerLoop,
    QueueReader,
    ResiliencePolicy,
    SerializerMethods,
    ShardConnection,
    SyncLayerAccess,
    check_channel,
    check_group,
    check_health,
    check_message,
    close_before_loop,
    layer_stats,
    observe,
    raise_if_reply_lost,
)
from channels_valkey.serializers import registry

logger = logging.getLogger("channels_valkey.pubsub")

WORKER_MODES = ("queue", "pubsub")
_OPTIONS = (
    "hosts", "prefix", "on_disconnect", "on_reconnect", "symmetric_encryption_keys", "serializer_format",
    "expiry", "group_expiry", "capacity", "channel_capacity", "worker_channels", "policy", "max_message_bytes",
)  # fmt: skip


#: Why a prefix on a Valkey Cluster may hold no brace (for the error saying so).
_TAGS = (
    "a brace would make it the hash tag of every name and queue, putting them all in one slot (the layer tags "
    "queues by channel)"
)


class ValkeyPubSubChannelLayer(BulkSends, ServerNames, SerializerMethods, SyncLayerAccess, BaseChannelLayer):  # type: ignore[misc]
    """The Valkey Pub/Sub channel layer: process channels and groups on Pub/Sub, worker channels on queues.

    ``hosts``, ``prefix``, ``on_disconnect``, ``on_reconnect``, ``symmetric_encryption_keys`` and
    ``serializer_format`` are channels-valkey 0.3's settings; ``expiry``, ``capacity`` and ``channel_capacity``
    bound the local buffers and the worker queues, ``group_expiry`` is accepted for settings shared with the core
    layer, ``worker_channels`` picks how normal channels travel, ``policy`` sets connection timeouts and retries,
    ``max_message_bytes`` the largest serialized message a send accepts (None: no limit).
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    #: Seconds one blocking pop of a worker queue waits on the server.
    brpop_timeout = 5

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "asgi",
        on_disconnect: str | None = None,
        on_reconnect: str | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        serializer_format: str = "msgpack",
        *,
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[Any, int] | None = None,
        worker_channels: str = "queue",
        policy: ResiliencePolicy | None = None,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {', '.join(map(repr, sorted(unknown)))}; "
                f"the options are {', '.join(_OPTIONS)}"
            )
        for name, notice in (("on_disconnect", on_disconnect), ("on_reconnect", on_reconnect)):
            if notice is not None and (not isinstance(notice, str) or not notice):
                raise TypeError(f"{name} must be a message type (a non-empty str) or None, not {notice!r}")
        if worker_channels not in WORKER_MODES:
            raise ValueError(f"worker_channels must be 'queue' or 'pubsub', not {worker_channels!r}")
        options = LayerOptions.check(
            hosts, prefix, expiry, group_expiry, capacity, channel_capacity, policy, max_message_bytes, _TAGS
        )
        super().__init__(expiry=options.expiry, capacity=options.capacity)
        self.prefix = options.prefix
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self.group_expiry = options.group_expiry
        self.max_message_bytes = options.max_message_bytes
        self.channel_capacity = self.compile_capacities(options.channel_capacity)
        self.worker_channels = worker_channels
        self.hosts = options.hosts
        #: On a Valkey Cluster names travel on sharded Pub/Sub and worker queues carry a hash tag.
        self.cluster = options.cluster
        # Payloads exactly as 0.3 publishes them: no random prefix, no TTL on encrypted ones.
        self._serializer = registry.get_serializer(
            serializer_format, random_prefix_length=0, symmetric_encryption_keys=symmetric_encryption_keys
        )
        self.policy = options.policy
        self._connections = ConnectionManager(self.hosts, self.policy, block_seconds=self.brpop_timeout)
        self.counters = DropCounters()
        self._counts = MessageCounts("pubsub")
        # Decoding goes through serialize()/deserialize(), so a subclass overriding them (as 0.3 allowed) is heard.
        self._codec = MessageCodec(self, self.counters, logger)
        self.client_prefix = uuid.uuid4().hex[:12]
        #: Normal channels' queues (unless worker_channels="pubsub").
        self._queues = WorkerQueues(
            self._connections,
            prefix=self.prefix,
            cluster=self.cluster,
            expiry=self.expiry,
            block_seconds=self.brpop_timeout,
            counters=self.counters,
            decode=self.decode_payload,
            waited=self._counts.waited["normal"],
        )
        #: Each event loop's subscriptions, local channels and readers.
        self._states: PerLoop[LoopState] = PerLoop()
        #: SPUBLISH through slot handovers on a Valkey Cluster.
        self._sharded = ShardedPublisher(self._connections)
        self._lock = threading.Lock()
        # Last: a metrics collection on another thread may call stats() from now on.
        observe(self)  # its counts in the OpenTelemetry metrics, where opentelemetry-api is installed

    def __str__(self) -> str:
        return f"{type(self).__name__}(hosts={self.hosts}, prefix={self.prefix!r})"

    # Names ------------------------------------------------------------------------------------------------------

    def consistent_hash(self, value: str | bytes) -> int:
        """The shard of a channel or group Pub/Sub name, as channels-valkey 0.3 places it."""
        return self._connections.ring_now().index(value)

    def pubsub_shard(self, name: str) -> int:
        return self.consistent_hash(name)

    def _kind(self, channel: str) -> str:
        """``"process"`` for a channel of one process (ours or a peer's), ``"normal"`` otherwise (for counting)."""
        return "process" if "!" in channel or is_peer_process_channel(self.prefix, channel) else "normal"

    def _is_worker(self, channel: str, kind: str | None = None) -> bool:
        """Whether ``channel`` (of ``kind``, when known already) travels on a worker queue."""
        return self.worker_channels == "queue" and (kind or self._kind(channel)) == "normal"

    @property
    def pubsub_shards(self) -> set[int]:
        """Shards where the ACL refuses the queue commands: their normal channels travel on Pub/Sub."""
        return self._queues.refused_shards()

    # Serialization ----------------------------------------------------------------------------------------------

    def decode_payload(self, name: str, data: bytes) -> dict[str, Any] | None:
        """The message published or queued as ``data`` for ``name``, or None when it cannot be read (counted in
        ``counters.undecodable`` and logged)."""
        return self._codec.decode(data, name)

    # Sending ----------------------------------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``: published, or queued for one receiver on a worker channel.

        Raises ChannelFull when a worker channel's queue holds ``capacity`` messages.
        """
        if (sync := self._hand_off_to()) is not None:
            await sync.hand_off(ValkeyPubSubChannelLayer.send(self, channel, message))
            return
        check_channel(channel)
        check_message(message)
        payload = self._payload(message, "channel", channel)
        shard = (await self._connections.ring()).index(channel)
        kind = self._kind(channel)
        try:
            queued = False
            if self._is_worker(channel, kind) and self._queues.enabled(shard):
                queued = await self._queues.enqueue(shard, channel, payload, self.get_capacity(channel))
                if not queued and self._queues.enabled(shard):
                    capacity = self.get_capacity(channel)
                    raise ChannelFull(f"channel {channel!r} is at capacity ({capacity} messages queued)")
            if not queued:
                await self._publish(shard, channel, payload)
        except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
            raise_if_reply_lost(error, f"send to {channel!r}")
            raise
        self._counts.sent[kind] += 1

    async def _publish(self, shard: int, name: str, payload: bytes) -> None:
        if self.cluster:
            await self._sharded.publish(shard, name, payload)
            return
        # Not idempotent: a retried PUBLISH whose reply was lost would deliver twice; only refused ones retry.
        # On the shard's command lane: publishes of all tasks share one pipelined connection.
        await self._connections.execute_command(shard, "PUBLISH", name, payload, idempotent=False)

    # Receiving --------------------------------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``. Cancelling the wait keeps the subscription and loses no message."""
        state = self._states.get(asyncio.get_running_loop())
        if state is None or type(channel) is not str or channel not in state.channels:
            check_channel(channel)  # a channel received here already was checked when it was first received
            state = await self._state()
        while True:
            local, created = state.channel(channel)
            if created:
                # Not waited for: the receive below waits anyway. Worker channels subscribe too, for messages
                # that 0.3 processes publish during a rolling upgrade.
                await state.subscribe(channel, wait=False)
            item = local.take() if not local.waiters else None
            if item is None:
                item = await self._wait(local)
            # A group's message (decoded once for all members) or a notice is ready; the rest is decoded here.
            message = item if type(item) is dict else self._open(channel, item)
            if message is not None:
                self._counts.received[local.kind] += 1
                return message

    async def _wait(self, local: LocalChannel) -> Item:
        reader = self._queue_reader(local)
        if reader is not None:
            held = reader.take_held()  # given back by a receive that was cancelled
            if held is not None:
                return held
        waiter: asyncio.Future[Item] = asyncio.get_running_loop().create_future()
        local.waiters.append(waiter)  # answered by whichever comes first: the queue or Pub/Sub
        if reader is not None:
            reader.wait_for(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed over just as this receive was cancelled: the next receive gets it.
                self._give_back(local, waiter.result())
            raise
        finally:
            if waiter in local.waiters:
                local.waiters.remove(waiter)
            local.last_active = time.monotonic()

    def _queue_reader(self, local: LocalChannel) -> QueueReader | None:
        """The reader of ``local``'s worker queue on this loop, or None when the channel travels on Pub/Sub."""
        if not self._is_worker(local.name, local.kind) or not self._queues.enabled(local.shard):
            return None
        if local.reader is None:
            local.reader = self._queues.reader(local.shard, local.name)
        return local.reader

    def _give_back(self, local: LocalChannel, item: Item) -> None:
        if isinstance(item, Handover):
            item.reader.give_back(item)
        else:
            local.deliver(item, first=True)

    def _open(self, channel: str, item: Item) -> dict[str, Any] | None:
        if isinstance(item, Handover):
            return item.message
        if isinstance(item, dict):
            return item
        return self._codec.decode(item, channel)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new process channel, subscribed before it is returned, so nothing sent to it afterwards is missed."""
        if not isinstance(prefix, str):
            raise TypeError(f"new_channel prefix must be a str, not {prefix!r}")
        channel = f"{self.prefix}{prefix}{self.client_prefix}!{uuid.uuid4().hex}"
        try:
            check_channel(channel)
        except TypeError:
            raise TypeError(
                f"new_channel prefix {prefix!r} makes the invalid channel name {channel!r} (layer prefix "
                f"{self.prefix!r}): names are at most 99 ASCII letters, digits, '-', '_' or '.', with one '!'"
            ) from None
        state = await self._state()
        local, _ = state.channel(channel)
        try:
            await state.subscribe(channel, wait=True)
        except BaseException:
            await state.drop_channel(local)
            raise
        return channel

    # Groups -----------------------------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel received in this process to ``group``; returns once the group is subscribed."""
        check_group(group)
        check_channel(channel)
        state = await self._state()
        local = state.channels.get(channel)
        if local is None:
            raise RuntimeError(
                f"group_add({group!r}, {channel!r}): the channel is not received on this event loop. With Pub/Sub "
                "a group's messages reach only the processes subscribed to it, so only a channel made with "
                "new_channel() (or being received) here can join; consumers do "
                f"`await self.channel_layer.group_add({group!r}, self.channel_name)`"
            )
        name = group_channel(self.prefix, group)
        state.join_group(name, local)
        local.last_active = time.monotonic()  # its consumer is alive
        try:
            await state.subscribe(name, wait=True)
        except BaseException:
            if state.leave_group(name, channel):
                await state.unsubscribe([name])
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` here; the group is unsubscribed when its last local member goes."""
        check_group(group)
        check_channel(channel)
        state = self._states.get(asyncio.get_running_loop())
        if state is None:
            return
        name = group_channel(self.prefix, group)
        if state.leave_group(name, channel):
            await state.unsubscribe([name])

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to every process subscribed to ``group``."""
        if (sync := self._hand_off_to()) is not None:
            await sync.hand_off(ValkeyPubSubChannelLayer.group_send(self, group, message))
            return
        check_group(group)
        check_message(message)
        name = group_channel(self.prefix, group)
        payload = self._payload(message, "group", group)
        try:
            shard = (await self._connections.ring()).index(name)
            await self._publish(shard, name, payload)
        except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
            raise_if_reply_lost(error, f"group_send to {group!r}")
            raise
        self._counts.sent["group"] += 1

    # Flush and close --------------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Unsubscribe and forget everything local, delete this prefix's worker queues; the layer stays usable.

        Receives waiting right now keep waiting (their channels stay subscribed).
        """
        state = self._states.get(asyncio.get_running_loop())
        if state is not None:
            await state.flush()
        await self._queues.delete_all()

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of this instance's counts: messages sent and received by kind, dropped by
        reason (``counters``), and held in this process now, not yet received (local buffers of every event loop,
        and worker-queue messages popped but not handed over); see ``channels_valkey.sentinel.layer_stats``."""
        with self._lock:
            states = list(self._states.values())
        held = {"normal": 0, "process": 0}
        for state in states:
            for name, local in list(state.channels.items()):
                held[self._kind(name)] += len(local.items) + (len(local.reader.held) if local.reader else 0)
        return layer_stats(self._counts, self.counters, held, self._connections.connection_figures())

    async def health(self, timeout: float = 1.0) -> HealthReport:
        """Whether every primary of the layer is reachable and answering as a primary, asked at once and answered
        within ``timeout`` seconds; never raises for a server that is down (see ``channels_valkey.sentinel.health``)."""
        return await check_health(self._connections, timeout=timeout)

    async def close_pools(self) -> None:
        """Close this event loop's subscriptions, readers and connections (they reopen on next use); from a loop
        ``async_to_sync`` made for one call, those its sends were handed to as well."""
        await self._close_handed_off()
        await _close_loop_state(self)
        await self._connections.close()

    # What the loop state and readers call -------------------------------------------------------------------------

    async def shard(self, index: int) -> ShardConnection:
        return await self._connections.shard(index)

    # Event loops ------------------------------------------------------------------------------------------------

    async def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is not None:
            return state
        # The connection manager's close hook goes on the loop first, so ours (added after) runs before it and
        # stops the tasks before their connections close.
        await self._connections.shards()
        with self._lock:
            state = self._states.get(loop)
            if state is None:
                state = self._states.put(loop, LoopState(self))
                close_before_loop(loop, self, _close_loop_state)
        return state

    def loop_state(self) -> LoopState | None:
        """This event loop's state, if it has one (for tests and monitoring)."""
        return self._states.get(asyncio.get_running_loop())


async def _close_loop_state(layer: ValkeyPubSubChannelLayer) -> None:
    """Stop the layer's tasks on the running event loop: for ``close_pools()``, or because the loop is closing
    (``async_to_sync``, ``asyncio.run``)."""
    with layer._lock:
        state = layer._states.pop(asyncio.get_running_loop())
    if state is not None:
        await state.aclose()
