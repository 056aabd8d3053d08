"""Receiving on one event loop: a reader task per server queue, filling the receives that wait on it.

A ``receive()`` never talks to the server itself: it waits on a future that a reader task fills. The reader is
never cancelled by a consumer going away, so a message the server handed over is never lost in a cancelled reply.

Normal channels: a message leaves the server only for a receive waiting for it. The reader pops at most one
message per receive waiting on this loop (``BZMPOP ... COUNT n``, or ``BZPOPMIN`` + ``ZPOPMIN`` where that is
refused) and stops when none waits. So a channel's queue on the server holds what waits in it, which is what
capacity counts; other processes reading the channel are not starved; and a process killed with SIGKILL takes
with it only the messages its receives were handed. A message whose receive went away while it was on its way is
given to another receive waiting here, or else put back at the head of its queue at once, with its original score.
On a sharded layer a normal channel is read on every shard at once, so one receive can bring one message per shard:
the surplus goes back the same way.

Process channels: a process's shared ``name!`` queue belongs to that process alone, so its reader drains it in
batches while a receive of the process waits, and for a short while after, and files every message in the layer's
:class:`~channels_valkey.core.inbox.ProcessInbox` under the channel named in ``__asgi_channel__``, where a receive
on any event loop finds it.
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

from channels_valkey.core.inbox import ProcessInbox
from channels_valkey.core.names import non_local_name
from channels_valkey.core.stats import DropCounters
from channels_valkey.sentinel import ResiliencePolicy, ShardUnavailable, cancel_and_wait, raise_if_cancelling

logger = logging.getLogger("channels_valkey.core")

#: A queue member and its score (the send time), as popped.
Entry = tuple[bytes, float]

#: Largest batch a process queue's reader takes in one round trip.
PROCESS_BATCH = 100
#: Seconds a process queue's reader keeps popping after its last receive, so that a consumer that receives again
#: at once finds its message already here.
IDLE_LINGER = 0.5
#: Process queue readers per loop allowed to linger at once.
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


@dataclass(frozen=True)
class _Handover:
    """A normal channel's message given to a waiting receive, with its server entry for putting it back."""

    message: dict[str, Any]
    entry: Entry
    origin: _Queue


@dataclass(eq=False)
class _Queue:
    """One server queue read on this loop: a normal channel, or a process's shared ``name!`` queue."""

    shard: int
    key: str
    channel: str  # the channel name, or the non-local "name!" part for a process queue
    process: bool
    reader: asyncio.Task[None] | None = None
    #: Normal channels: the receives waiting on this queue now, each handed one message through its future.
    #: (Receives of process channels wait in the inbox, with those of every other loop.)
    waiters: deque[asyncio.Future[Any]] = field(default_factory=deque)
    #: Process queues: when (monotonic) the reader last saw a receive waiting.
    last_wanted: float = 0.0
    #: Normal channels: messages whose receive went away while they were handed over, oldest first, on their way
    #: to another receive waiting here or back to the server.
    held: deque[tuple[Entry, dict[str, Any]]] = field(default_factory=deque)
    #: Whether its reader holds one of the loop's lingering slots.
    lingering: bool = False

    def waiting(self) -> int:
        """Receives still waiting (the ones answered or cancelled are dropped from the front)."""
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        return sum(1 for waiter in self.waiters if not waiter.done())

    def next_waiter(self) -> asyncio.Future[Any] | None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                return waiter
        return None

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


class LoopReceiver:
    """All receiving of one layer on one event loop; process-channel messages are kept in the layer's inbox."""

    def __init__(self, source: QueueSource, inbox: ProcessInbox) -> None:
        self.source = source
        self.inbox = inbox
        self._queues: dict[tuple[int, str], _Queue] = {}
        self._lingering = 0

    def queue(self, shard: int, key: str, channel: str, *, process: bool) -> _Queue:
        found = self._queues.get((shard, key))
        if found is None:
            found = self._queues[(shard, key)] = _Queue(shard, key, channel, process)
        return found

    # Receiving ------------------------------------------------------------------------------------------------

    async def receive_process(self, channel: str, shard: int, key: str) -> dict[str, Any]:
        """The next message of process channel ``channel`` (kept in queue ``key``), whichever loop's reader popped
        it."""
        inbox = self.inbox
        message = inbox.take(channel)
        while message is None:
            waiter = inbox.waiter(channel, key)
            try:
                # Taken again once registered: a message filed in between has woken nobody.
                message = inbox.take(channel)
                if message is None:
                    if inbox.claim(key):
                        self._ensure_reader(self.queue(shard, key, non_local_name(channel), process=True))
                    # Bounded, so that a reader whose loop was closed without ending its tasks is replaced.
                    done, _ = await asyncio.wait({waiter.future}, timeout=self.source.brpop_timeout)
                    if done:
                        waiter.future.result()  # raises what made the reader give up
                    message = inbox.take(channel)
            finally:
                inbox.forget(channel, key, waiter)
        return message

    async def receive_normal(self, queues: list[_Queue]) -> dict[str, Any]:
        """The next message of a normal channel read from ``queues`` (one per shard)."""
        for queue in queues:
            taken = queue.take_held(self.source.expiry, self.source.counters)
            if taken is not None:
                return taken[1]
        waiter: asyncio.Future[_Handover] = asyncio.get_running_loop().create_future()
        for queue in queues:
            queue.waiters.append(waiter)
            self._ensure_reader(queue)
        try:
            return (await waiter).message
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as this receive was cancelled: another receive or the server gets it.
                self._give_back(waiter.result())
            raise
        finally:
            waiter.cancel()  # answered already, or no reader may answer it any more

    # Readers --------------------------------------------------------------------------------------------------

    def _ensure_reader(self, queue: _Queue) -> None:
        if queue.reader is None or queue.reader.done():
            queue.reader = asyncio.get_running_loop().create_task(
                self._read(queue), name=f"channels-valkey reader {queue.key}"
            )

    async def _read(self, queue: _Queue) -> None:
        try:
            await self._pop_while_wanted(queue)
        except asyncio.CancelledError:
            # The loop is closing (asyncio.run and async_to_sync cancel what is left): what is held here would
            # die with it, so it goes back to the server first.
            if queue.held:
                await asyncio.shield(self._requeue_held(queue))
            raise
        finally:
            if queue.process:
                self.inbox.release(queue.key)  # receives waiting on other loops read it from now on
            if queue.lingering:
                queue.lingering = False
                self._lingering -= 1
            # Forget the queue (a process may use many channel names once); a later receive makes it anew.
            if self._queues.get((queue.shard, queue.key)) is queue and not queue.held and not queue.waiting():
                del self._queues[(queue.shard, queue.key)]

    async def _pop_while_wanted(self, queue: _Queue) -> None:
        source = self.source
        failures = 0
        failing_since = 0.0
        backoff = source.policy.backoff()
        while True:
            raise_if_cancelling()  # a cancellation valkey-py turned into a connection error must still stop us
            try:
                if not queue.process:
                    self._settle_held(queue)
                    if queue.held:
                        await self._requeue_held(queue)  # nobody here wants them
                        continue
                plan = self._next_pop(queue)
                if plan is None:
                    return
                count, timeout = plan
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
            if queue.process:
                self._file(queue, entries)
            else:
                self._hand_out(queue, entries)
            if entries:
                # Let the receives just answered finish (and stop counting as waiting) before the next pop.
                await asyncio.sleep(0)

    def _next_pop(self, queue: _Queue) -> tuple[int, float] | None:
        """How many messages to pop and how long to block, or None when the reader should stop."""
        if not queue.process:
            waiting = queue.waiting()
            return (waiting, self.source.brpop_timeout) if waiting else None
        now = time.monotonic()
        if self.inbox.waiting(queue.key):
            queue.last_wanted = now
            return PROCESS_BATCH, self.source.brpop_timeout
        if now - queue.last_wanted < IDLE_LINGER and (queue.lingering or self._lingering < MAX_LINGERING):
            if not queue.lingering:
                self._lingering += 1
                queue.lingering = True
            # One block time for every lingering pop, so the command is the same each time (its packed bytes are
            # cached); a linger ends at most one block time late.
            return PROCESS_BATCH, IDLE_LINGER
        if self.inbox.release_if_idle(queue.key):
            return None
        return PROCESS_BATCH, self.source.brpop_timeout  # a receive came in just now

    def _file(self, queue: _Queue, entries: list[Entry]) -> None:
        """Put a process queue's messages in the inbox, under the channel(s) each names."""
        for (_, score), message in self._fresh(queue, entries):
            # Process channels name their channel(s): a group_send names every member channel of the process.
            targets = message.pop("__asgi_channel__", None)
            names = [targets] if isinstance(targets, str) else list(targets or [])
            if not names:
                self.source.counters.undecodable += 1
                logger.warning("a message in %s names no channel; skipped", queue.key)
                continue
            for index, name in enumerate(names):
                self.inbox.put(name, score, message if index == len(names) - 1 else dict(message))
        self.inbox.sweep_if_due()

    def _hand_out(self, queue: _Queue, entries: list[Entry]) -> None:
        """Give a normal channel's messages to the receives waiting, one each; hold the surplus for the server.

        They queue up behind anything given back during the pop, which was popped before them."""
        for entry, message in self._fresh(queue, entries):
            message.pop("__asgi_channel__", None)  # the peers' group_send names a normal channel too
            queue.held.append((entry, message))
        self._settle_held(queue)

    def _fresh(self, queue: _Queue, entries: list[Entry]) -> list[tuple[Entry, dict[str, Any]]]:
        """The readable, unexpired messages of ``entries``; the rest is dropped and counted."""
        now = time.time()
        fresh: list[tuple[Entry, dict[str, Any]]] = []
        for entry in entries:
            if now - entry[1] > self.source.expiry:
                self.source.counters.expired += 1
                logger.info("a message in %s expired before anyone received it", queue.key)
                continue
            message = self.source.decode(entry[0])
            if message is not None:
                fresh.append((entry, message))
        return fresh

    def _give_back(self, handover: _Handover) -> None:
        # It was popped before anything still held, so it goes first.
        origin = handover.origin
        origin = self._queues.setdefault((origin.shard, origin.key), origin)
        origin.held.appendleft((handover.entry, handover.message))
        self._ensure_reader(origin)

    def _settle_held(self, queue: _Queue) -> None:
        """Hand held messages to the receives waiting, oldest first."""
        while queue.held:
            waiter = queue.next_waiter()
            if waiter is None:
                return
            taken = queue.take_held(self.source.expiry, self.source.counters)
            if taken is None:
                queue.waiters.appendleft(waiter)
                return
            entry, message = taken
            waiter.set_result(_Handover(message, entry, queue))

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
        if queue.process:
            self.inbox.release(queue.key, error)
            return
        for waiter in queue.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        queue.waiters.clear()

    # Housekeeping ---------------------------------------------------------------------------------------------

    def drop_messages(self) -> None:
        """Forget every message held on this loop (``flush``); waiting receives keep waiting for new ones."""
        for queue in self._queues.values():
            queue.held.clear()

    async def aclose(self) -> None:
        """Stop every reader (each hands back what it holds) and release the waiters."""
        readers = [queue.reader for queue in self._queues.values() if queue.reader is not None]
        await asyncio.gather(*(cancel_and_wait(reader) for reader in readers))
        for queue in list(self._queues.values()):
            if queue.held:
                await self._requeue_held(queue)
            for waiter in queue.waiters:
                waiter.cancel()
        self._queues.clear()
