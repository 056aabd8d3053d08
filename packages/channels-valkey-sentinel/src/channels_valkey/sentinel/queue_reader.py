"""Reading a sorted-set queue for the receives that wait on it, without ever losing what was popped.

Both layers keep normal channels in sorted-set queues (score = send time) and read them the same way, with one
:class:`QueueReader` per queue and event loop:

- A ``receive()`` never talks to the server: it puts a future in the reader's ``waiters`` and the reader's task
  fills it. The task is never cancelled by a consumer going away, so a reply the server sent is never lost with a
  cancelled receive.
- The reader pops only for receives that wait, at most one message each (``BZMPOP ... COUNT n``), and stops when
  none waits. So the queue on the server holds what waits in it (which is what capacity counts), other processes
  reading the channel are not starved, and a process killed with SIGKILL takes with it only the messages its
  receives were handed.
- A message whose receive went away while it was on its way comes back to the reader (:meth:`give_back`): it goes
  to the next receive waiting here, or back to the head of the server queue with its original score, before
  anything newer is popped. A pop cut short by the loop closing puts back what the server popped meanwhile.
- A pop moves what it takes into a receipt of the reader's on the server (receipts.py), read back after a pop whose
  reply was lost, so a connection cut with messages on the wire loses none; the reader waits for a message on a
  tracking connection (tracking_lane.py). Where a shard refuses that, it pops with ``BZMPOP``, as 0.3 did.
- Connection failures are retried under the layer's :class:`~channels_valkey.sentinel.Retries`; the waiting
  receives see an error only when the retries give up or the shard cannot be used.

A layer may read a queue differently (the core layer drains a process's own queue in batches into its inbox) by
overriding :meth:`QueueReader.plan`, :meth:`QueueReader.deliver` and :meth:`QueueReader.fail`, and let a queue its
receives can do without rest instead of retrying (:meth:`QueueReader.served_elsewhere`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.exceptions import ShardUnavailable
from channels_valkey.sentinel.histograms import Distribution
from channels_valkey.sentinel.queue_commands import Entry, blocking_pop, requeue, score_member_pairs
from channels_valkey.sentinel.receipts import ACK_DELAY, REQUEUE, Receipt, pop_with_receipt, refuses_receipts
from channels_valkey.sentinel.retry import Retries
from channels_valkey.sentinel.tasks import cancel_and_wait, raise_if_cancelling
from channels_valkey.sentinel.tracking_lane import Doorbell

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionManager

#: A message read from a queue, ready for a receive.
Message = dict[str, Any]


class DropCounting(Protocol):
    """The drop counters a reader adds to (the layer's ``counters``)."""

    expired: int
    undecodable: int


def _no_way_out(shard: int, error: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class QueueSource:
    """What a layer supplies to its queue readers.

    ``decode`` turns a popped member into a message (``None`` when it cannot be read: the layer counts and logs it).
    ``logger`` is the layer's: drops and retries are logged where the layer's users look for them. ``on_refused`` is
    told of an error while popping; it returns True when the layer has another way for that shard (the Pub/Sub layer
    carries normal channels on Pub/Sub where the ACL refuses the queue commands): the reader then stops and its
    receives keep waiting for what arrives that other way.
    """

    connections: ConnectionManager
    block_seconds: float
    expiry: float
    counters: DropCounting
    decode: Callable[[bytes], Message | None]
    logger: logging.Logger
    on_refused: Callable[[int, BaseException], bool] = _no_way_out
    #: Where the time each message waited between its send and the receive that takes it is recorded.
    waited: Distribution | None = None


@dataclass(frozen=True, eq=False)
class Handover:
    """A message handed to a waiting receive, with what it takes to give it back (:meth:`QueueReader.give_back`)."""

    message: Message
    entry: Entry
    reader: QueueReader


class QueueReader:
    """Pops queue ``key`` on shard ``shard`` for the receives waiting on it on this event loop."""

    def __init__(
        self,
        source: QueueSource,
        shard: int,
        key: str,
        *,
        on_finished: Callable[[QueueReader], None] | None = None,
    ) -> None:
        self.source = source
        self.shard = shard
        self.key = key
        #: Receives waiting on this queue, each handed one :class:`Handover` through its future. A future may wait
        #: on several readers at once (one per shard, or a queue and a Pub/Sub channel): the first to answer wins.
        self.waiters: deque[asyncio.Future[Any]] = deque()
        #: Messages popped but not handed over (a surplus, or given back), oldest first.
        self.held: deque[tuple[Entry, Message]] = deque()
        self.task: asyncio.Task[None] | None = None
        self._on_finished = on_finished
        #: Loop time before which the queue is not read again (see :meth:`served_elsewhere`), also by a new task.
        self.resting_until = 0.0
        #: This reader's receipt and doorbell, made at its first pop with receipts.
        self._receipt: Receipt | None = None
        self._bell = Doorbell()
        #: Rung when a receive starts waiting, for a reader deciding whether to clear its receipt.
        self._wanted = Doorbell()

    # What receives call ------------------------------------------------------------------------------------------

    def wait_for(self, waiter: asyncio.Future[Any]) -> None:
        """Register a receive's future; the reader fills it with a :class:`Handover`."""
        self.waiters.append(waiter)
        self._wanted.ring()
        self.ensure_running()

    def take_held(self) -> Message | None:
        """The oldest held message still within ``expiry``, for a receive that finds it here at once."""
        taken = self._take_held()
        return None if taken is None else taken[1]

    def give_back(self, handover: Handover) -> None:
        """A message whose receive was cancelled as it was handed over: first in line again."""
        self.held.appendleft((handover.entry, handover.message))
        self.ensure_running()

    def waiting(self) -> int:
        """Receives still waiting (answered or cancelled ones are dropped from the front)."""
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        return sum(1 for waiter in self.waiters if not waiter.done())

    def idle(self) -> bool:
        """Whether the reader holds nothing and is not popping (it may be forgotten)."""
        unread = self._receipt is not None and self._receipt.uncertain
        return (self.task is None or self.task.done()) and not self.held and not unread

    def drop_held(self) -> None:
        """Forget the held messages (``flush``)."""
        self.held.clear()

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"channels-valkey queue reader {self.key}"
            )

    async def aclose(self) -> None:
        """Stop popping (what a pop in progress took goes back), put back what is held, release the waiters."""
        if self.task is not None:
            await cancel_and_wait(self.task)
        await self._hand_back()
        for waiter in self.waiters:
            waiter.cancel()
        self.waiters.clear()

    # How this queue is read (a layer may override) -------------------------------------------------------------

    def plan(self) -> tuple[int, float] | None:
        """How many messages to pop and how long to block for the first, or None to stop."""
        waiting = self.waiting()
        return (waiting, self.source.block_seconds) if waiting else None

    def deliver(self, fresh: list[tuple[Entry, Message]]) -> None:
        """Hand popped messages to the receives waiting, one each; hold the surplus for the server.

        They queue up behind anything given back during the pop, which was popped before them."""
        for entry, message in fresh:
            message.pop("__asgi_channel__", None)  # the peers' group_send names a normal channel too
            self.held.append((entry, message))
        self._settle_held()

    def fail(self, error: BaseException) -> None:
        """The queue cannot be read: the receives waiting get ``error``."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self.waiters.clear()

    def served_elsewhere(self, error: BaseException) -> float | None:
        """After ``error``, the seconds to rest before reading the queue again, when its receives are served some
        other way meanwhile (the same channel's queue on another shard): they keep waiting, no retry is counted.
        None (here, always): retry as usual, and fail the receives when the retries give up."""
        return None

    def finished(self) -> None:
        """The reader's task ends (nothing wanted, gave up, or cancelled)."""
        if self._on_finished is not None:
            self._on_finished(self)

    # The reading task --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._pop_while_wanted()
        except asyncio.CancelledError:
            # The loop is closing (asyncio.run and async_to_sync cancel what is left before they close it, and
            # the layers' hooks on the loop's close come after): what is held here would die with it, and the
            # receipt would keep a copy of the last reply on the server until it expires, so both are dealt
            # with first.
            await asyncio.shield(self._hand_back())
            raise
        finally:
            self.finished()

    async def _pop_while_wanted(self) -> None:
        source = self.source
        retries = Retries(
            source.connections.policy,
            f"receiving from {self.key}",
            logger=source.logger,
            on_retry=source.connections.shard_counts(self.shard).reconnected,
        )
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            # A cancellation valkey-py turned into a connection error must still stop us.
            raise_if_cancelling(task)
            if self.resting_until > loop.time():
                await asyncio.sleep(self.resting_until - loop.time())
            try:
                if self.held:
                    self._settle_held()
                    if self.held:
                        await self._requeue_held()  # nobody here wants them
                        continue
                plan = self.plan()
                if plan is None:
                    if await self._settle_receipt():
                        continue
                    return
                count, timeout = plan
                entries = await self._pop(count, timeout)
            except (valkey_errors.ValkeyError, OSError) as error:
                if source.on_refused(self.shard, error):
                    self.waiters.clear()  # they wait on the layer's other way
                    return
                rest = self.served_elsewhere(error)
                if rest is not None:
                    self.resting_until = loop.time() + rest
                    continue
                # Receivers see an error only when the retries give up (a Sentinel failover lasts seconds) or the
                # shard cannot be used at all.
                if isinstance(error, ShardUnavailable) or not retries.failed():
                    self.fail(error)
                    return
                await retries.wait(error, level=logging.WARNING)
                continue
            retries.succeeded()
            self.deliver(self._fresh(entries))
            if entries:
                # Let the receives just answered finish (and stop counting as waiting) before the next pop.
                await asyncio.sleep(0)

    async def _pop(self, count: int, timeout: float) -> list[Entry]:
        """Up to ``count`` entries, waiting up to ``timeout`` for the first: with a receipt where the shard allows."""
        connections = self.source.connections
        if self._with_receipts():
            if self._receipt is None:
                self._receipt = Receipt(self.key)
            try:
                return await pop_with_receipt(
                    connections,
                    self.shard,
                    self._receipt,
                    self._bell,
                    count,
                    timeout,
                    self._ttl_ms(),
                    self._requeue,
                )
            except valkey_errors.ResponseError as error:
                if not refuses_receipts(error):
                    raise
                self.source.logger.info(
                    "shard %d refuses popping with a receipt (%s); receiving with BZMPOP from now on, which loses a "
                    "pop's messages when its connection is cut",
                    self.shard,
                    error,
                )
                connections.facts(self.shard).receipts_refused = True
        return await blocking_pop(connections, self.shard, self.key, timeout, count, self._requeue)

    async def _settle_receipt(self) -> bool:
        """Nobody waits: deal with the receipt before stopping. True when the reader should look again (a receive
        came meanwhile, or the receipt gave back what a lost reply had popped, now held), False to stop."""
        receipt = self._receipt
        if receipt is None or not self._with_receipts():
            return False
        if receipt.uncertain:
            recovered = await self._pop(0, 0.0)
            self.deliver(self._fresh(recovered))  # nobody waits: held here, then put back
            return True
        if not receipt.outstanding:
            return False
        # A receive soon after (a consumer's next one) pops, which clears the receipt in the same call.
        self._wanted.arm()
        await self._wanted.wait(ACK_DELAY)
        if self.waiting():
            return True
        await self._clear_receipt(receipt)
        return True

    async def _clear_receipt(self, receipt: Receipt) -> None:
        receipt.outstanding = False
        try:
            await self.source.connections.execute_command(self.shard, "DEL", receipt.name, idempotent=True)
        except (valkey_errors.ValkeyError, OSError) as error:
            self.source.logger.debug(
                "clearing the receipt %s failed (it expires by itself): %s", receipt.name, error
            )

    async def _close_receipt(self) -> None:
        """The loop is closing: put back what a lost reply left in the receipt, or clear it."""
        receipt = self._receipt
        if receipt is None or not self._with_receipts():
            return
        try:
            if receipt.uncertain:
                self.held.extend(self._fresh(await self._pop(0, 0.0)))
            if receipt.outstanding:
                await self._clear_receipt(receipt)
        except (valkey_errors.ValkeyError, OSError) as error:
            self.source.logger.info(
                "reading back the receipt %s failed; it expires by itself: %s", receipt.name, error
            )

    async def _hand_back(self) -> None:
        """Before the reader goes with its loop: the receipt read back (a lost reply's messages, now held) or
        cleared, then everything held put back on the server."""
        await self._close_receipt()
        if self.held:
            await self._requeue_held()

    def _with_receipts(self) -> bool:
        """Whether this queue is popped with a receipt: the policy wants it and the shard has not refused it."""
        connections = self.source.connections
        return connections.policy.receipts and not connections.facts(self.shard).receipts_refused

    def _ttl_ms(self) -> int:
        return max(int(self.source.expiry * 1000), 1000)

    def _fresh(self, entries: list[Entry]) -> list[tuple[Entry, Message]]:
        """The readable, unexpired messages of ``entries``; the rest is dropped and counted."""
        source = self.source
        now = time.time()
        fresh: list[tuple[Entry, Message]] = []
        for entry in entries:
            if now - entry[1] > source.expiry:
                source.counters.expired += 1
                source.logger.info("a message in %s expired before anyone received it", self.key)
                continue
            message = source.decode(entry[0])
            if message is not None:
                fresh.append((entry, message))
        return fresh

    def _take_held(self) -> tuple[Entry, Message] | None:
        now = time.time()
        while self.held:
            entry, message = self.held.popleft()
            waited = now - entry[1]
            if waited <= self.source.expiry:
                if self.source.waited is not None:
                    self.source.waited.record(max(waited, 0.0))  # the sender's clock may be ahead of ours
                return entry, message
            self.source.counters.expired += 1
            self.source.logger.info("a message held for %s expired before anyone received it", self.key)
        return None

    def _settle_held(self) -> None:
        """Hand held messages to the receives waiting, oldest first."""
        while self.held:
            waiter = self._next_waiter()
            if waiter is None:
                return
            taken = self._take_held()
            if taken is None:
                self.waiters.appendleft(waiter)
                return
            entry, message = taken
            waiter.set_result(Handover(message, entry, self))

    def _next_waiter(self) -> asyncio.Future[Any] | None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    async def _requeue_held(self) -> None:
        """Put the held messages back at the head of the server queue (their scores keep the order)."""
        returning = list(self.held)
        self.held.clear()  # a receive meanwhile must not take what is on its way back
        try:
            await self._requeue([entry for entry, _ in returning])
        except BaseException:
            # Held again, so the next attempt (or aclose) puts them back: the same member and score twice is
            # harmless, a message dropped is not.
            self.held.extendleft(reversed(returning))
            raise

    async def _requeue(self, entries: list[Entry]) -> None:
        """Put ``entries`` back at the head of the queue, and out of the receipt if the reader has one."""
        receipt = self._receipt
        connections = self.source.connections
        if receipt is None or not entries or not self._with_receipts():
            await requeue(connections, self.shard, self.key, entries)
            return
        pairs = score_member_pairs(entries)
        await REQUEUE.run(connections, self.shard, [self.key, receipt.name], pairs, idempotent=True)
        receipt.returned(entries)
