"""Receiving on one event loop: a reader task per server queue, local buffers per channel, waiters.

A ``receive()`` never talks to the server itself: it waits on a future that a reader task fills. The reader is
never cancelled by a consumer going away, so a message the server handed over is never lost in a cancelled reply:
if its receiver is gone, a message of a normal channel goes back to the head of its queue (other processes may
take it), and one of a process channel stays in this process's buffer for the next ``receive()``.

Readers pop only while somebody waits. A normal channel's reader takes at most as many messages as there are
waiters, so several processes reading one channel each get distinct messages; the reader of a process's shared
``name!`` queue drains it in batches and files each message under the channel named in ``__asgi_channel__``.
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
from channels_valkey.sentinel import ResiliencePolicy, ShardUnavailable, cancel_and_wait

logger = logging.getLogger("channels_valkey.core")

#: A queue member and its score (the send time), as popped.
Entry = tuple[bytes, float]

#: How often (seconds) buffers of channels nobody receives from are swept for expired messages.
SWEEP_INTERVAL = 1.0
#: Largest batch a process queue's reader takes in one round trip.
PROCESS_BATCH = 100


class QueueSource(Protocol):
    """What the readers need from the layer: popping, putting back, decoding, limits."""

    expiry: float
    brpop_timeout: float
    counters: DropCounters
    policy: ResiliencePolicy

    async def blocking_pop(
        self, shard: int, key: str, timeout: float, on_interrupted: Callable[[Entry], Awaitable[None]]
    ) -> Entry | None: ...

    async def pop_batch(self, shard: int, key: str, count: int) -> list[Entry]: ...

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
    #: Messages of a normal channel whose receiver was cancelled as they were handed over: they go to the next
    #: local waiter, or back to the head of the server queue, before anything newer is popped.
    returned: deque[tuple[Entry, dict[str, Any]]] = field(default_factory=deque)


class LoopReceiver:
    """All receiving of one layer on one event loop."""

    def __init__(self, source: QueueSource) -> None:
        self.source = source
        self._buffers: dict[str, _Buffer] = {}
        self._queues: dict[tuple[int, str], _Queue] = {}
        self._last_sweep = time.monotonic()

    # Receiving ------------------------------------------------------------------------------------------------

    async def receive(self, channel: str, queues: list[_Queue]) -> dict[str, Any]:
        buffer = self._buffers.setdefault(channel, _Buffer())
        self._expire(channel, buffer)
        if buffer.items and not buffer.waiters:
            return buffer.items.popleft()[1]
        waiter: asyncio.Future[_Handover] = asyncio.get_running_loop().create_future()
        buffer.waiters.append(waiter)
        for queue in queues:
            self._ensure_reader(queue)
        try:
            return (await waiter).message
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A message was handed over just as this receive was cancelled: keep it for the next one.
                self._give_back(channel, waiter.result())
            raise
        finally:
            if waiter in buffer.waiters:  # usually already taken by the reader that answered it
                buffer.waiters.remove(waiter)
            if not buffer.items and not buffer.waiters:
                self._buffers.pop(channel, None)

    def queue(self, shard: int, key: str, channel: str, *, process: bool) -> _Queue:
        found = self._queues.get((shard, key))
        if found is None:
            found = self._queues[(shard, key)] = _Queue(shard, key, channel, process)
        return found

    # Readers --------------------------------------------------------------------------------------------------

    def _ensure_reader(self, queue: _Queue) -> None:
        if queue.reader is None or queue.reader.done():
            queue.reader = asyncio.get_running_loop().create_task(
                self._read(queue), name=f"channels-valkey reader {queue.key}"
            )

    def _waiting(self, queue: _Queue) -> int:
        if not queue.process:
            buffer = self._buffers.get(queue.channel)
            return len(buffer.waiters) if buffer else 0
        return sum(
            len(buffer.waiters) for name, buffer in self._buffers.items() if name.startswith(queue.channel)
        )

    async def _read(self, queue: _Queue) -> None:
        source = self.source
        failures = 0
        failing_since = 0.0
        backoff = source.policy.backoff()
        while True:
            if queue.returned:
                await self._settle_returned(queue)
            wanted = self._waiting(queue)
            if wanted == 0:
                # Forget the queue (a process may use many channel names once); a later receive makes it anew.
                if self._queues.get((queue.shard, queue.key)) is queue:
                    del self._queues[(queue.shard, queue.key)]
                return
            try:
                entry = await source.blocking_pop(
                    queue.shard, queue.key, source.brpop_timeout, lambda e: self._put_back(queue, [e])
                )
                entries = [entry] if entry is not None else []
                more = (PROCESS_BATCH if queue.process else wanted) - len(entries)
                if entries and more > 0:
                    entries += await source.pop_batch(queue.shard, queue.key, more)
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
                # Its receiver went away while the pop was under way; settled before the next pop.
                queue.returned.append(((member, score), message))
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
        origin = self._queues.setdefault((handover.origin.shard, handover.origin.key), handover.origin)
        origin.returned.append((handover.entry, handover.message))
        self._ensure_reader(origin)

    async def _settle_returned(self, queue: _Queue) -> None:
        """Hand returned messages to local waiters, oldest first; put the rest back at the head of the queue."""
        while queue.returned:
            entry, message = queue.returned[0]
            if not self._hand_over(queue.channel, _Handover(message, entry, queue)):
                break
            queue.returned.popleft()
        if queue.returned:
            # Cleared only once they are back: a put-back cut short is repeated by aclose(), and putting the same
            # member back twice with the same score is harmless.
            await self.source.requeue(queue.shard, queue.key, [entry for entry, _ in queue.returned])
            queue.returned.clear()

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
        return sum(len(buffer.items) for buffer in self._buffers.values())

    def drop_messages(self) -> None:
        """Forget every message held locally (``flush``); waiting receives keep waiting for new ones."""
        for queue in self._queues.values():
            queue.returned.clear()
        for channel, buffer in list(self._buffers.items()):
            buffer.items.clear()
            if not buffer.waiters:
                del self._buffers[channel]

    async def aclose(self) -> None:
        """Stop every reader (each hands back what it popped) and release the waiters."""
        readers = [queue.reader for queue in self._queues.values() if queue.reader is not None]
        await asyncio.gather(*(cancel_and_wait(reader) for reader in readers))
        for queue in self._queues.values():
            if queue.returned:
                await self.source.requeue(queue.shard, queue.key, [entry for entry, _ in queue.returned])
        for buffer in self._buffers.values():
            for waiter in buffer.waiters:
                waiter.cancel()
        self._buffers.clear()
        self._queues.clear()
