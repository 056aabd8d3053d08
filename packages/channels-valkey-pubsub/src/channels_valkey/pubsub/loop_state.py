"""What a layer holds on one event loop: its channels (buffer + waiting receives), groups, subscribers, readers.

Messages from Pub/Sub land in the buffer of each local channel they are for (a group's message in the buffer of
every local member) as raw bytes, decoded only by the receive that takes them. A buffer holds at most the channel's
capacity (the oldest makes room) and its messages expire after ``expiry`` seconds. A channel nobody has received
from for ``expiry`` seconds (no receive waiting, none finished since) is dropped: buffer freed, local group
memberships removed, its subscription and those of groups left without a local member given up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol

from channels_valkey.pubsub.cluster_subscriber import ClusterSubscriber
from channels_valkey.pubsub.subscriber import Subscriber
from channels_valkey.pubsub.subscriptions import Subscriptions
from channels_valkey.sentinel import (
    BackgroundTask,
    DropCounters,
    Handover,
    MessageCounts,
    QueueReader,
    ResiliencePolicy,
    Shard,
    ShardConnection,
)

logger = logging.getLogger("channels_valkey.pubsub")

#: What a buffer or a waiting receive holds: Pub/Sub bytes, a ready message (a notice), or a popped queue entry.
Item = bytes | dict[str, Any] | Handover

#: Longest pause between two sweeps of idle channels and expired messages.
MAX_SWEEP_INTERVAL = 1.0


class Owner(Protocol):
    """What the loop state needs from the layer."""

    policy: ResiliencePolicy
    expiry: int
    counters: DropCounters
    on_disconnect: str | None
    on_reconnect: str | None
    #: Whether the layer runs on a Valkey Cluster (sharded Pub/Sub, see cluster_subscriber.py).
    cluster: bool
    #: The layer's message counts (group fan-out is recorded where a group's message arrives).
    _counts: MessageCounts

    def get_capacity(self, channel: str) -> int: ...

    def decode_payload(self, name: str, data: bytes) -> dict[str, Any] | None: ...

    def pubsub_shard(self, name: str) -> int: ...

    def _kind(self, channel: str) -> str: ...

    async def shard(self, index: int) -> ShardConnection: ...


class LocalChannel:
    """One channel received on this loop: its buffered messages, its waiting receives, its groups."""

    __slots__ = (
        "capacity",
        "groups",
        "items",
        "kind",
        "last_active",
        "name",
        "reader",
        "shard",
        "state",
        "waiters",
    )

    def __init__(self, state: LoopState, name: str, shard: int, capacity: int, kind: str) -> None:
        self.state = state
        self.name = name
        self.shard = shard
        self.capacity = capacity
        #: ``"process"`` or ``"normal"``, as the layer counts its messages.
        self.kind = kind
        self.items: deque[tuple[float, Item]] = deque()
        self.waiters: deque[asyncio.Future[Item]] = deque()
        self.groups: set[str] = set()
        self.last_active = time.monotonic()
        self.reader: QueueReader | None = None

    # Waiters -------------------------------------------------------------------------------------------------

    def waiting(self) -> int:
        return sum(1 for waiter in self.waiters if not waiter.done())

    def fail(self, error: BaseException) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)

    # Buffer -------------------------------------------------------------------------------------------------

    def deliver(self, item: Item, *, first: bool = False) -> None:
        """Hand ``item`` to the longest-waiting receive, or else buffer it (at the head when ``first``)."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if len(self.items) >= self.capacity:
            dropped = self.items.pop() if first else self.items.popleft()
            if isinstance(dropped[1], Handover):  # never held here, but never lose one either
                dropped[1].reader.give_back(dropped[1])
            self.state.owner.counters.buffer_overflow += 1
            logger.info(
                "local buffer of %s is full (%d); dropped its oldest message", self.name, self.capacity
            )
        if first:
            self.items.appendleft((time.monotonic(), item))
        else:
            self.items.append((time.monotonic(), item))

    def take(self) -> Item | None:
        """The oldest buffered message that has not expired, or None."""
        now = time.monotonic()
        oldest_allowed = now - self.state.owner.expiry
        if self.items and self.items[0][0] < oldest_allowed:  # else nothing expired: no call for it
            self.expire(oldest_allowed)
        if self.items:
            self.last_active = now  # a consumer that never has to wait is alive too
            return self.items.popleft()[1]
        return None

    def expire(self, oldest_allowed: float) -> None:
        items = self.items
        while items and items[0][0] < oldest_allowed:
            items.popleft()
            self.state.owner.counters.expired += 1
            logger.info("a message buffered for %s expired before anyone received it", self.name)


class LoopState:
    """Everything one layer keeps on one event loop; the subscribers report to it (it is their Sink)."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.channels: dict[str, LocalChannel] = {}
        #: Group Pub/Sub name -> names of the local channels in it.
        self.groups: dict[str, set[str]] = {}
        self.subscribers: dict[int, Subscriptions] = {}
        self._sweeper: BackgroundTask | None = None
        self.closed = False

    # Subscriptions ------------------------------------------------------------------------------------------

    def subscriber(self, index: int) -> Subscriptions:
        found = self.subscribers.get(index)
        if found is None:
            owner = self.owner
            if owner.cluster:
                found = ClusterSubscriber(index, _cluster_getter(owner, index), owner.policy, self)
            else:
                found = Subscriber(index, _shard_getter(owner, index), owner.policy, self)
            self.subscribers[index] = found
        return found

    async def subscribe(self, name: str, *, wait: bool) -> None:
        await self.subscriber(self.owner.pubsub_shard(name)).subscribe([name], wait=wait)

    async def unsubscribe(self, names: Iterable[str]) -> None:
        by_shard: dict[int, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.owner.pubsub_shard(name), []).append(name)
        for index, group in by_shard.items():
            subscriber = self.subscribers.get(index)
            if subscriber is not None:
                await subscriber.unsubscribe(group)

    # Channels -----------------------------------------------------------------------------------------------

    def channel(self, name: str) -> tuple[LocalChannel, bool]:
        """The local channel ``name`` and whether it was just created."""
        found = self.channels.get(name)
        if found is not None:
            return found, False
        owner = self.owner
        created = self.channels[name] = LocalChannel(
            self, name, owner.pubsub_shard(name), owner.get_capacity(name), owner._kind(name)
        )
        self._ensure_sweeper()
        return created, True

    async def drop_channel(self, channel: LocalChannel) -> None:
        """Forget ``channel``: its buffer, its group memberships, its subscription (and now-empty groups')."""
        if self.channels.get(channel.name) is not channel:
            return
        del self.channels[channel.name]
        if not self.channels:
            self.channels = {}  # dicts keep the table of their largest size; after a burst, give it back
        if channel.items:
            self.owner.counters.expired += len(channel.items)
            logger.info(
                "dropped %d unreceived message(s) of idle channel %s", len(channel.items), channel.name
            )
            channel.items.clear()
        emptied = [group for group in channel.groups if self.leave_group(group, channel.name)]
        await self.unsubscribe([channel.name, *emptied])

    def join_group(self, group: str, channel: LocalChannel) -> bool:
        """Add ``channel`` to the group's local members; True when it is the group's first local member."""
        members = self.groups.get(group)
        first = members is None
        if members is None:
            members = self.groups[group] = set()
        members.add(channel.name)
        channel.groups.add(group)
        return first

    def leave_group(self, group: str, channel_name: str) -> bool:
        """Remove a member; True when the group has no local member left (its subscription should go)."""
        members = self.groups.get(group)
        if members is None:
            return False
        members.discard(channel_name)
        local = self.channels.get(channel_name)
        if local is not None:
            local.groups.discard(group)
        if members:
            return False
        del self.groups[group]
        if not self.groups:
            self.groups = {}
        return True

    # What the subscribers report ----------------------------------------------------------------------------

    def on_message(self, name: str, data: bytes) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.deliver(data)  # decoded by the receive that takes it
        members = self.groups.get(name)
        if members:
            self._fan_out(name, data, members)

    def _fan_out(self, group: str, data: bytes, members: set[str]) -> None:
        """Hand a group's message to each local member: decoded once, a shallow copy each (the last gets the
        original), so a consumer may change the keys of its message but shares the values inside with the rest."""
        message = self.owner.decode_payload(group, data)
        if message is None:
            return  # counted and logged once, not once per member
        targets = [target for member in members if (target := self.channels.get(member)) is not None]
        last = len(targets) - 1
        self.owner._counts.fanout.record(len(targets))
        for index, target in enumerate(targets):
            target.deliver(message if index == last else message.copy())

    def on_down(self, source: Subscriptions, names: Collection[str]) -> None:
        if self.owner.on_disconnect is not None:
            self._notify(names, self.owner.on_disconnect)

    def on_restored(self, source: Subscriptions, names: Collection[str]) -> None:
        if self.owner.on_reconnect is not None:
            self._notify(names, self.owner.on_reconnect)

    def on_failed(self, source: Subscriptions, names: Collection[str], error: BaseException) -> None:
        for channel in self._channels_of(names):
            channel.fail(error)

    def _notify(self, names: Collection[str], kind: str) -> None:
        for channel in self._channels_of(names):
            channel.deliver({"type": kind})

    def _channels_of(self, names: Collection[str]) -> list[LocalChannel]:
        """Local channels reached through the subscriptions ``names`` (their own or a group's)."""
        found: dict[str, LocalChannel] = {}
        for name in names:
            channel = self.channels.get(name)
            if channel is not None:
                found[name] = channel
            for member in self.groups.get(name, ()):
                local = self.channels.get(member)
                if local is not None:
                    found[member] = local
        return list(found.values())

    # Housekeeping -------------------------------------------------------------------------------------------

    def _ensure_sweeper(self) -> None:
        if not self.closed and (self._sweeper is None or self._sweeper.work.done()):
            # A BackgroundTask, like the listeners: a sweep writes UNSUBSCRIBE, where valkey-py can lose the one
            # cancellation a loop closed by asyncio.run gives it, and the sweeping would then never end.
            self._sweeper = BackgroundTask(self._sweep_forever(), "channels-valkey pubsub sweeper")

    async def _sweep_forever(self) -> None:
        interval = min(MAX_SWEEP_INTERVAL, self.owner.expiry / 4)
        while self.channels:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                # A failed UNSUBSCRIBE is repeated by the next reconnection's restore (the name is no longer
                # wanted); nothing here may end the sweeping.
                logger.exception("sweeping idle channels failed")

    async def sweep(self) -> None:
        """Expire old buffered messages and drop channels idle for ``expiry`` seconds."""
        now = time.monotonic()
        oldest_allowed = now - self.owner.expiry
        idle: list[LocalChannel] = []
        for channel in self.channels.values():
            channel.expire(oldest_allowed)
            if channel.last_active < oldest_allowed and not channel.waiting() and _reader_idle(channel):
                idle.append(channel)
        for channel in idle:
            await self.drop_channel(channel)

    # Flush and close ----------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Forget every local channel, group and buffered message; channels with a waiting receive stay."""
        for group in list(self.groups):
            for member in list(self.groups.get(group, ())):
                self.leave_group(group, member)
        keep: list[str] = []
        stopping: list[QueueReader] = []
        for name, channel in list(self.channels.items()):
            channel.items.clear()
            if channel.waiting():
                keep.append(name)
            else:
                del self.channels[name]
                if channel.reader is not None:
                    channel.reader.drop_held()
                    stopping.append(channel.reader)
        # A forgotten channel's reader may still be at work (clearing its receipt): stopped here, not left running
        # past the loop's close.
        await asyncio.gather(*(reader.aclose() for reader in stopping))
        names = {name for subscriber in self.subscribers.values() for name in subscriber.wanted}
        await self.unsubscribe(names.difference(keep))

    async def aclose(self) -> None:
        """Stop every task of this loop (readers put back what they hold) and release waiting receives."""
        self.closed = True
        tasks: list[Callable[[], Awaitable[None]]] = []
        if self._sweeper is not None:
            tasks.append(self._sweeper.stop)
        for channel in self.channels.values():
            if channel.reader is not None:
                tasks.append(channel.reader.aclose)
        for subscriber in self.subscribers.values():
            tasks.append(subscriber.aclose)
        await asyncio.gather(*(task() for task in tasks))
        for channel in self.channels.values():
            for waiter in channel.waiters:
                waiter.cancel()
        self.channels.clear()
        self.groups.clear()
        self.subscribers.clear()


def _reader_idle(channel: LocalChannel) -> bool:
    return channel.reader is None or channel.reader.idle()


def _shard_getter(owner: Owner, index: int) -> Callable[[], Awaitable[Shard]]:
    """For a :class:`Subscriber`: it opens its connection from one server's pool, which a cluster does not have."""

    async def get() -> Shard:
        shard = await owner.shard(index)
        server = shard.single_server()
        if server is None:
            raise TypeError(f"{shard.describe()} is a Valkey Cluster: its Pub/Sub needs a ClusterSubscriber")
        return server

    return get


def _cluster_getter(owner: Owner, index: int) -> Callable[[], Awaitable[ShardConnection]]:
    async def get() -> ShardConnection:
        return await owner.shard(index)

    return get
