"""Receiving on one event loop: a reader task per server queue, local buffers per channel, waiters.

A ``receive()`` never talks to the server itself: it waits on a future that a reader task fills. The reader is
never cancelled by a consumer going away, so a message the server handed over is never lost in a cancelled reply:
if its receiver is gone, a message of a normal channel is held for the next local receive (or goes back to the
head of its queue, where other processes may take it), and one of a process channel stays in this process's buffer.

Readers pop in batches of one round trip (``BZMPOP ... COUNT n``, or ``BZPOPMIN`` + ``ZPOPMIN`` where that is
refused). A normal channel's reader takes at most ``NORMAL_PREFETCH`` messages at a time (one when nobody waits);
what no local receive claims within ``IDLE_LINGER`` seconds goes back to the head of the server queue, with its
original score, so several processes reading one channel each get distinct messages and none waits long for
messages another process holds. The reader of a process's shared ``name!`` queue drains it in batches and files
each message under the channel named in ``__asgi_channel__``. After its last receive a reader keeps popping for
``IDLE_LINGER`` seconds, so a consumer that receives again at once finds its message already here; at most
``MAX_LINGERING`` readers per loop linger, so channels used once do not each keep a connection.
Buffered messages expire by age, and each channel's buffer is bounded by its capacity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from valkey import exceptions as valkey_errors

from channels_valkey.core.stats import DropCounters
from channels_valkey.sentinel import ResiliencePolicy, ShardUnavailable, cancel_and_wait, raise_if_cancelling

logger = logging.getLogger("channels_valkey.core")

#: A queue member and its score (the send time), as popped.
Entry = tuple[bytes, float]

#: How often (seconds) buffers of channels nobody receives from are swept for expired messages.
SWEEP_INTERVAL = 1.0
#: Largest batch a process queue's reader takes in one round trip.
PROCESS_BATCH = 100
#: Largest batch a normal channel's reader takes in one round trip while somebody waits.
NORMAL_PREFETCH = 20
#: Seconds a reader keeps popping after its last receive, and a normal channel's popped messages wait for a
#: local receive before going back to the server.
IDLE_LINGER = 0.5
#: Shortest block (seconds) asked of the server.
MIN_BLOCK = 0.01
#: Readers per loop allowed to linger at once.
MAX_LINGERING = 16


class QueueSource(Protocol):
    """What the readers need from the layer: popping, putting back, decoding, limits."""

    expiry: float
    brpop_timeout: float
    counters: DropCounters
    policy: ResiliencePolicy

    async def blocking_pop(
        self,
        shard: int,
        key: str,
        timeout: float,
        count: int,
        on_interrupted: Callable[[list[Entry]], Awaitable[None]],
    ) -> list[Entry]: ...

    async def requeue(self, shard: int, key: str, entries: list[Entry]) -> None: ...

    def decode(self, member: bytes) -> dict[str, Any] | None: ...

    def get_capacity(self, channel: str) -> int: ...


@dataclass(eq=False)
class _Buffer:
    """Messages that arrived for one channel before anyone asked, and the receivers waiting for one."""

    items: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    waiters: deque[asyncio.Future[_Handover]] = field(default_factory=deque)


@dataclass(frozen=True)
class _Handover:
    """A message given to a waiting receiver, with its server entry (normal channels) for putting it back."""

    message: dict[str, Any]
    entry: Entry | None = None
    origin: _Queue | None = None


@dataclass(eq=False)
class _Queue:
    """One server queue read on this loop: a normal channel, or a process's shared ``name!`` queue."""

    shard: int
    key: str
    channel: str  # the channel name, or the non-local "name!" part for a process queue
    process: bool
    reader: asyncio.Task[None] | None = None
    #: Receives waiting on this queue now.
    waiting: int = 0
    #: When (monotonic) a receive last waited on this queue.
    last_wanted: float = 0.0
    #: Normal channels: messages popped that no receive has taken yet, oldest first, and since when the oldest
    #: has been held. They go to the next local receive, or back to the head of the server queue.
    held: deque[tuple[Entry, dict[str, Any]]] = field(default_factory=deque)
    held_since: float = 0.0
    #: Whether its reader holds one of the loop's lingering slots.
    lingering: bool = False
    #: Resolved when a receive starts waiting, to wake a reader that is idle with held messages.
    wake: asyncio.Future[None] | None = None

    def hold(self, entry: Entry, message: dict[str, Any], *, oldest: bool = False) -> None:
        if not self.held:
            self.held_since = time.monotonic()
        if oldest:
            self.held.appendleft((entry, message))
        else:
            self.held.append((entry, message))

    def take_held(self, expiry: float, counters: DropCounters) -> tuple[Entry, dict[str, Any]] | None:
        """The oldest held message still within ``expiry``; expired ones are dropped (counted)."""
        now = time.time()
        while self.held:
            entry, message = self.held.popleft()
            if now - entry[1] <= expiry:
                return entry, message
            counters.expired += 1
            logger.info("a message held for %s expired before anyone received it", self.channel)
        return None

    def nudge(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class LoopReceiver:
    """All receiving of one layer on one event loop."""

    def __init__(self, source: QueueSource) -> None:
        self.source = source
        self._buffers: dict[str, _Buffer] = {}
        self._queues: dict[tuple[int, str], _Queue] = {}
        self._last_sweep = time.monotonic()
        self._lingering = 0

    # Receiving ------------------------------------------------------------------------------------------------

    async def receive(self, channel: str, queues: list[_Queue]) -> dict[str, Any]:
        buffer = self._buffers.setdefault(channel, _Buffer())
        self._expire(channel, buffer)
        if not buffer.waiters:
            if buffer.items:
                return buffer.items.popleft()[1]
            for queue in queues:
                if queue.held:
                    taken = queue.take_held(self.source.expiry, self.source.counters)
                    if taken is not None:
                        queue.last_wanted = time.monotonic()
                        self._drop_if_empty(channel, buffer)
                        return taken[1]
        waiter: asyncio.Future[_Handover] = asyncio.get_running_loop().create_future()
        buffer.waiters.append(waiter)
        now = time.monotonic()
        for queue in queues:
            queue.waiting += 1
            queue.last_wanted = now
            queue.nudge()
            self._ensure_reader(queue)
        try:
            return (await waiter).message
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A message was handed over just as this receive was cancelled: keep it for the next one.
                self._give_back(channel, waiter.result())
            raise
        finally:
            for queue in queues:
                queue.waiting -= 1
            if waiter in buffer.waiters:  # usually already taken by the reader that answered it
                buffer.waiters.remove(waiter)
            self._drop_if_empty(channel, buffer)

    def queue(self, shard: int, key: str, channel: str, *, process: bool) -> _Queue:
        found = self._queues.get((shard, key))
        if found is None:
            found = self._queues[(shard, key)] = _Queue(shard, key, channel, process)
        return found

    def _drop_if_empty(self, channel: str, buffer: _Buffer) -> None:
        # Only if it is still the channel's buffer: a sweep may have replaced it while this receive waited, and
        # the new one can hold a message given back a moment ago.
        if not buffer.items and not buffer.waiters and self._buffers.get(channel) is buffer:
            del self._buffers[channel]

    # Readers --------------------------------------------------------------------------------------------------

    def _ensure_reader(self, queue: _Queue) -> None:
        if queue.reader is None or queue.reader.done():
            queue.reader = asyncio.get_running_loop().create_task(
                self._read(queue), name=f"channels-valkey reader {queue.key}"
            )

    async def _read(self, queue: _Queue) -> None:
        try:
            await self._read_while_wanted(queue)
        except asyncio.CancelledError:
            # The loop is closing (asyncio.run and async_to_sync cancel what is left): what is held here would
            # die with it, so it goes back to the server first.
            if queue.held:
                await asyncio.shield(self._requeue_held(queue))
            raise
        finally:
            # Forget the queue (a process may use many channel names once); a later receive makes it anew.
            if self._queues.get((queue.shard, queue.key)) is queue and not queue.held and not queue.waiting:
                del self._queues[(queue.shard, queue.key)]

    async def _read_while_wanted(self, queue: _Queue) -> None:
        """Pop while receives wait, and linger a little after."""
        try:
            await self._pop_while_wanted(queue)
        finally:
            if queue.lingering:
                queue.lingering = False
                self._lingering -= 1

    async def _pop_while_wanted(self, queue: _Queue) -> None:
        source = self.source
        failures = 0
        failing_since = 0.0
        backoff = source.policy.backoff()
        while True:
            raise_if_cancelling()  # a cancellation valkey-py turned into a connection error must still stop us
            self._settle_held(queue)
            try:
                if queue.waiting:
                    count = PROCESS_BATCH if queue.process else max(queue.waiting, NORMAL_PREFETCH)
                    timeout = source.brpop_timeout
                elif queue.held:
                    # Nobody here wants them yet: wait a little for a receive, then give them back.
                    remaining = queue.held_since + IDLE_LINGER - time.monotonic()
                    if remaining > 0:
                        await self._wait_for_receive(queue, remaining)
                    else:
                        await self._requeue_held(queue)
                    continue
                else:
                    idle = time.monotonic() - queue.last_wanted
                    if idle >= IDLE_LINGER:
                        return
                    if not queue.lingering:
                        if self._lingering >= MAX_LINGERING:
                            return
                        self._lingering += 1
                        queue.lingering = True
                    # Never below the server's 1 ms resolution: a timeout that rounds to 0 blocks forever.
                    count, timeout = 1, max(IDLE_LINGER - idle, MIN_BLOCK)
                entries = await source.blocking_pop(
                    queue.shard, queue.key, timeout, count, lambda popped: self._put_back(queue, popped)
                )
            except (valkey_errors.ValkeyError, OSError) as error:
                # A connection problem: retried under the policy (Sentinel failovers last seconds); receivers
                # see an error only when the policy gives up or the shard cannot be used at all.
                failures += 1
                failing_since = failing_since or time.monotonic()
                gave_up = time.monotonic() - failing_since > source.policy.retry_deadline
                if isinstance(error, ShardUnavailable) or gave_up or failures > source.policy.retry_attempts:
                    self._fail_waiters(queue, error)
                    return
                logger.warning("receiving on %s failed (%s); retry %d", queue.key, error, failures)
                await asyncio.sleep(backoff.compute(failures))
                continue
            failures = 0
            failing_since = 0.0
            self._dispatch(queue, entries)
            if entries:
                # Let the receives just answered finish (and stop counting as waiting) before the next pop.
                await asyncio.sleep(0)

    def _dispatch(self, queue: _Queue, entries: list[Entry]) -> None:
        now = time.time()
        for member, score in entries:
            if now - score > self.source.expiry:
                self.source.counters.expired += 1
                continue
            message = self.source.decode(member)
            if message is None:
                continue
            # Process channels name their channel(s); the peers' group_send names a normal channel too.
            targets = message.pop("__asgi_channel__", None)
            if queue.process:
                names = [targets] if isinstance(targets, str) else list(targets or [])
                if not names:
                    self.source.counters.undecodable += 1
                    logger.warning("a message in %s names no channel; skipped", queue.key)
                    continue
                for index, name in enumerate(names):
                    self._deliver(name, message if index == len(names) - 1 else dict(message))
            elif not self._hand_over(queue.channel, _Handover(message, (member, score), queue)):
                queue.hold((member, score), message)
        self._sweep_if_due()

    def _hand_over(self, channel: str, handover: _Handover) -> bool:
        buffer = self._buffers.get(channel)
        while buffer is not None and buffer.waiters:
            waiter = buffer.waiters.popleft()
            if not waiter.done():
                waiter.set_result(handover)
                return True
        return False

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        if self._hand_over(channel, _Handover(message)):
            return
        buffer = self._buffers.setdefault(channel, _Buffer())
        capacity = self.source.get_capacity(channel)
        if len(buffer.items) >= capacity:
            buffer.items.popleft()
            self.source.counters.buffer_overflow += 1
            logger.info("local buffer of %s is full (%d); dropped its oldest message", channel, capacity)
        buffer.items.append((time.monotonic(), message))

    def _give_back(self, channel: str, handover: _Handover) -> None:
        if handover.entry is None or handover.origin is None:
            buffer = self._buffers.setdefault(channel, _Buffer())
            buffer.items.appendleft((time.monotonic(), handover.message))
            return
        # It was popped before anything still held, so it goes first.
        origin = handover.origin
        origin = self._queues.setdefault((origin.shard, origin.key), origin)
        origin.hold(handover.entry, handover.message, oldest=True)
        self._ensure_reader(origin)

    def _settle_held(self, queue: _Queue) -> None:
        """Hand held messages to the receives waiting, oldest first."""
        buffer = self._buffers.get(queue.channel)
        while queue.held and buffer is not None and buffer.waiters:
            taken = queue.take_held(self.source.expiry, self.source.counters)
            if taken is None:
                return
            entry, message = taken
            if not self._hand_over(queue.channel, _Handover(message, entry, queue)):
                queue.hold(entry, message, oldest=True)
                return

    async def _wait_for_receive(self, queue: _Queue, seconds: float) -> None:
        queue.wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({queue.wake}, timeout=seconds)
        finally:
            queue.wake = None

    async def _requeue_held(self, queue: _Queue) -> None:
        """Put the held messages back at the head of the server queue (their scores keep the order)."""
        returning = list(queue.held)
        queue.held.clear()  # a receive meanwhile must not take what is on its way back
        try:
            await self.source.requeue(queue.shard, queue.key, [entry for entry, _ in returning])
        except BaseException:
            # Held again, so the next attempt (or aclose) puts them back: the same member and score twice is
            # harmless, a message dropped is not.
            queue.held.extendleft(reversed(returning))
            raise

    def _put_back(self, queue: _Queue, entries: list[Entry]) -> Awaitable[None]:
        return self.source.requeue(queue.shard, queue.key, entries)

    def _fail_waiters(self, queue: _Queue, error: BaseException) -> None:
        for name, buffer in self._buffers.items():
            if name == queue.channel or (queue.process and name.startswith(queue.channel)):
                for waiter in buffer.waiters:
                    if not waiter.done():
                        waiter.set_exception(error)

    # Housekeeping ---------------------------------------------------------------------------------------------

    def _expire(self, channel: str, buffer: _Buffer) -> None:
        oldest_allowed = time.monotonic() - self.source.expiry
        while buffer.items and buffer.items[0][0] < oldest_allowed:
            buffer.items.popleft()
            self.source.counters.expired += 1
            logger.info("a message buffered for %s expired before anyone received it", channel)

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for channel, buffer in list(self._buffers.items()):
            self._expire(channel, buffer)
            if not buffer.items and not buffer.waiters:
                del self._buffers[channel]

    @property
    def buffered(self) -> int:
        """Messages held in local buffers right now (for tests and monitoring)."""
        return sum(len(buffer.items) for buffer in self._buffers.values()) + sum(
            len(queue.held) for queue in self._queues.values()
        )

    def drop_messages(self) -> None:
        """Forget every message held locally (``flush``); waiting receives keep waiting for new ones."""
        for queue in self._queues.values():
            queue.held.clear()
        for channel, buffer in list(self._buffers.items()):
            buffer.items.clear()
            if not buffer.waiters:
                del self._buffers[channel]

    async def aclose(self) -> None:
        """Stop every reader (each hands back what it popped) and release the waiters."""
        readers = [queue.reader for queue in self._queues.values() if queue.reader is not None]
        await asyncio.gather(*(cancel_and_wait(reader) for reader in readers))
        for queue in list(self._queues.values()):
            if queue.held:
                await self._requeue_held(queue)
        for buffer in self._buffers.values():
            for waiter in buffer.waiters:
                waiter.cancel()
        self._buffers.clear()
        self._queues.clear()
