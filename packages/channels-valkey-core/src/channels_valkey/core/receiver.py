"""Receiving on one event loop: a reader per server queue, filling the receives that wait on it.

The readers are the connection package's :class:`~channels_valkey.sentinel.QueueReader`, which the Pub/Sub layer's
worker channels use too: a ``receive()`` never talks to the server itself, a normal channel's message leaves the
server only for a receive waiting for it (at most one per receive, ``BZMPOP ... COUNT n``), and a message whose
receive went away goes to another receive waiting here or back to the head of its queue. On a sharded layer a
normal channel is read on every shard at once, so one receive can bring one message per shard: the surplus goes
back the same way.

Process channels are read differently (:class:`ProcessQueueReader`): a process's shared ``name!`` queue belongs to
that process alone, so its reader drains it in batches while a receive of the process waits, and for a short while
after, and files every message in the layer's :class:`~channels_valkey.core.inbox.ProcessInbox` under the channel
named in ``__asgi_channel__``, where a receive on any event loop finds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels_valkey.core.inbox import ProcessInbox
from channels_valkey.sentinel import (
    Entry,
    Failure,
    Handover,
    QueueReader,
    QueueSource,
    ShardUnavailable,
    classify,
    wait_at_most,
)

logger = logging.getLogger("channels_valkey.core")

#: Largest batch a process queue's reader takes in one round trip.
PROCESS_BATCH = 100
#: Seconds a process queue's reader keeps popping after its last receive, so that a consumer that receives again
#: at once finds its message already here.
IDLE_LINGER = 0.5
#: Most seconds ``wait_received`` waits for the readers to settle (a linger is 0.5 s, clearing a receipt 50 ms).
SETTLE_TIMEOUT = 1.0
#: Process queue readers per loop allowed to linger at once.
MAX_LINGERING = 16


class NormalQueueReader(QueueReader):
    """Pops a normal channel's queue on one shard, for receives that read the channel on every shard at once.

    When its shard cannot be read (down, refusing connections) while another shard's reader is reading for the same
    receives, it leaves them to that reader and rests for ``backoff_cap`` seconds: the live shards' messages keep
    coming, no receive fails for want of one shard, and a dead shard is tried at the pace of a retry rather than once
    more (a refused connection, about a millisecond of this loop here) by every receive the live shards answer.
    Credentials, rights and TLS refused are not rested on: they fail the receives, to be fixed.
    """

    def __init__(self, source: QueueSource, shard: int, key: str, receiver: LoopReceiver) -> None:
        super().__init__(source, shard, key, on_finished=receiver.forget)
        self.receiver = receiver

    def served_elsewhere(self, error: BaseException) -> float | None:
        cause = error.cause if isinstance(error, ShardUnavailable) else error
        if classify(cause) is Failure.FATAL or not self.receiver.read_elsewhere(self):
            return None
        return self.source.connections.policy.backoff_cap


class ProcessQueueReader(QueueReader):
    """Drains one process's ``name!`` queue in batches into the inbox, for the receives of every event loop.

    Only one loop reads a process queue at a time (it *claims* it in the inbox), so two batches are never filed
    at once and a channel's messages keep their order.
    """

    def __init__(self, source: QueueSource, shard: int, key: str, receiver: LoopReceiver) -> None:
        super().__init__(source, shard, key, on_finished=receiver.forget)
        self.receiver = receiver
        #: When (monotonic) the reader last saw a receive waiting.
        self.last_wanted = 0.0
        #: Whether it holds one of the loop's lingering slots.
        self.lingering = False

    def plan(self) -> tuple[int, float] | None:
        inbox = self.receiver.inbox
        now = time.monotonic()
        if inbox.waiting(self.key):
            self.last_wanted = now
            return PROCESS_BATCH, self.source.block_seconds
        if now - self.last_wanted < IDLE_LINGER and (
            self.lingering or self.receiver.lingering < MAX_LINGERING
        ):
            if not self.lingering:
                self.receiver.lingering += 1
                self.lingering = True
            # One block time for every lingering pop, so the command is the same each time (its packed bytes are
            # cached); a linger ends at most one block time late.
            return PROCESS_BATCH, IDLE_LINGER
        if inbox.release_if_idle(self.key):
            return None
        return PROCESS_BATCH, self.source.block_seconds  # a receive came in just now

    def deliver(self, fresh: list[tuple[Entry, dict[str, Any]]]) -> None:
        """File the messages in the inbox, under the channel(s) each names."""
        inbox = self.receiver.inbox
        for (_, score), message in fresh:
            # Process channels name their channel(s): a group_send names every member channel of the process.
            targets = message.pop("__asgi_channel__", None)
            names = [targets] if isinstance(targets, str) else list(targets or [])
            if not names:
                self.source.counters.undecodable += 1
                logger.warning("a message in %s names no channel; skipped", self.key)
                continue
            for index, name in enumerate(names):
                inbox.put(name, score, message if index == len(names) - 1 else dict(message))
        inbox.sweep_if_due()

    def fail(self, error: BaseException) -> None:
        self.receiver.inbox.release(self.key, error)

    def finished(self) -> None:
        self.receiver.inbox.release(self.key)  # receives waiting on other loops read it from now on
        self.receiver.inbox.keep_sweeping()  # no delivery sweeps the buffers until a reader runs again
        if self.lingering:
            self.lingering = False
            self.receiver.lingering -= 1
        super().finished()


class LoopReceiver:
    """All receiving of one layer on one event loop; process-channel messages are kept in the layer's inbox."""

    def __init__(self, source: QueueSource, inbox: ProcessInbox) -> None:
        self.source = source
        self.inbox = inbox
        self._readers: dict[tuple[int, str], QueueReader] = {}
        #: Process queue readers lingering now.
        self.lingering = 0

    def reader(self, shard: int, key: str) -> QueueReader:
        """The reader of a normal channel's queue ``key`` on ``shard``."""
        found = self._readers.get((shard, key))
        if found is None:
            found = self._readers[(shard, key)] = NormalQueueReader(self.source, shard, key, self)
        return found

    def read_elsewhere(self, reader: QueueReader) -> bool:
        """Whether another shard's reader of ``reader``'s queue is reading now, not resting (asked only when a
        shard fails)."""
        now = asyncio.get_running_loop().time()
        return any(
            other is not reader
            and other.key == reader.key
            and other.task is not None
            and not other.task.done()
            and other.resting_until <= now
            for other in self._readers.values()
        )

    def forget(self, reader: QueueReader) -> None:
        """Drop a reader that stopped with nothing to do (a process may use many channel names once)."""
        place = (reader.shard, reader.key)
        if self._readers.get(place) is reader and not reader.held and not reader.waiting():
            del self._readers[place]

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
                        self._process_reader(shard, key).ensure_running()
                    # Bounded, so that a reader whose loop was closed without ending its tasks is replaced; raises
                    # what made the reader give up.
                    await wait_at_most(waiter.future, self.source.block_seconds)
                    message = inbox.take(channel)
            finally:
                inbox.forget(channel, key, waiter)
        return message

    async def receive_normal(self, readers: list[QueueReader]) -> dict[str, Any]:
        """The next message of a normal channel read by ``readers`` (one per shard)."""
        for reader in readers:
            held = reader.take_held()
            if held is not None:
                return held
        waiter: asyncio.Future[Handover] = asyncio.get_running_loop().create_future()
        for reader in readers:
            reader.wait_for(waiter)
        try:
            return (await waiter).message
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as this receive was cancelled: another receive or the server gets it.
                self._give_back(waiter.result())
            raise
        finally:
            waiter.cancel()  # answered already, or no reader may answer it any more

    def _process_reader(self, shard: int, key: str) -> QueueReader:
        found = self._readers.get((shard, key))
        if found is None:
            found = self._readers[(shard, key)] = ProcessQueueReader(self.source, shard, key, self)
        return found

    def _give_back(self, handover: Handover) -> None:
        # To the queue's reader on this loop now (the one that popped it may have been forgotten meanwhile).
        origin = handover.reader
        self._readers.setdefault((origin.shard, origin.key), origin).give_back(handover)

    # Housekeeping ---------------------------------------------------------------------------------------------

    def held(self) -> int:
        """Normal channels' messages popped on this loop and not handed over yet."""
        return sum(len(reader.held) for reader in list(self._readers.values()))

    def drop_messages(self) -> None:
        """Forget every message held on this loop (``flush``); waiting receives keep waiting for new ones."""
        for reader in self._readers.values():
            reader.drop_held()

    async def settled(self) -> None:
        """Wait for the readers that no receive waits on to end (they clear their receipts, or linger), for at most
        :data:`SETTLE_TIMEOUT`: one whose receive went away while it waited on an empty queue waits out its block
        time, holding nothing."""
        finishing = [
            reader.task
            for reader in list(self._readers.values())
            if reader.task is not None and not reader.task.done() and not reader.waiting()
        ]
        if finishing:
            await asyncio.wait(finishing, timeout=SETTLE_TIMEOUT)

    async def aclose(self) -> None:
        """Stop every reader (each hands back what it holds) and release the waiters."""
        readers = list(self._readers.values())
        await asyncio.gather(*(reader.aclose() for reader in readers))
        self._readers.clear()
