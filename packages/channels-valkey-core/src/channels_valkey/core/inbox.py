"""Messages of this process's own channels, kept for every event loop of the layer.

All ``name!suffix`` channels of a process share one server queue, ``{prefix}name!``, so a reader that pops it for
one receive also takes messages of the process's other channels. Those are kept here, with the layer, and not with
the event loop whose reader popped them: ``async_to_sync`` runs each call on a new loop that closes when the call
returns, and a message left with a closed loop would never be received. A receive on any loop takes from here, and
a receive waiting on another loop is woken thread-safely. A message stays here until a receive takes it, so a
receive cancelled at any moment loses nothing.

One reader at a time pops a process queue, on whichever loop claimed it, for the receives of every loop: two
readers popping one queue at once could file a channel's messages out of order. When its loop closes, the reader
puts back what it was popping and gives up its claim, and the receives still waiting elsewhere claim it anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from channels_valkey.sentinel import Distribution, DropCounters

logger = logging.getLogger("channels_valkey.core")

#: How often (seconds) the buffers are swept for expired messages, so channels nobody receives from empty too.
SWEEP_INTERVAL = 1.0


class ProcessInbox:
    """Per-channel buffers of process-channel messages that reached this process, the receives waiting on them,
    and which event loop reads each process queue.

    A buffer holds at most its channel's capacity (the oldest makes room, counted as ``buffer_overflow``) and drops
    what is older than ``expiry`` (counted as ``expired``): the limits a message has on the server.
    """

    def __init__(
        self,
        expiry: float,
        capacity_of: Callable[[str], int],
        counters: DropCounters,
        waited: Distribution | None = None,
    ) -> None:
        self._expiry = expiry
        self._waited = waited
        self._capacity_of = capacity_of
        self._counters = counters
        self._lock = threading.Lock()
        #: Channel -> (score, message), in the order the queue's one reader popped them.
        self._messages: dict[str, deque[tuple[float, dict[str, Any]]]] = {}
        #: Channel -> the receives waiting for it; queue key -> the receives waiting on any of its channels (dicts
        #: as ordered sets: a receive leaves its place at once, however many wait with it).
        self._waiters: dict[str, dict[_Waiter, None]] = {}
        self._waiting: dict[str, dict[_Waiter, None]] = {}
        #: Queue key -> the loop whose reader pops it now.
        self._readers: dict[str, asyncio.AbstractEventLoop] = {}
        self._last_sweep = time.monotonic()
        #: The loop whose timer sweeps while no reader delivers (see :meth:`keep_sweeping`), if any.
        self._sweeper: asyncio.AbstractEventLoop | None = None

    # Messages ---------------------------------------------------------------------------------------------------

    def put(self, channel: str, score: float, message: dict[str, Any]) -> None:
        """Keep ``message`` for the next receive of ``channel`` on any loop, and wake the receives waiting for it."""
        with self._lock:
            kept = self._messages.setdefault(channel, deque())
            kept.append((score, message))
            if len(kept) > self._capacity_of(channel):
                kept.popleft()
                self._counters.buffer_overflow += 1
                logger.info("local buffer of %s is full; dropped its oldest message", channel)
            waiters = list(self._waiters.get(channel, ()))
        for waiter in waiters:
            waiter.wake()

    def take(self, channel: str) -> dict[str, Any] | None:
        """The oldest message kept for ``channel`` that is still within ``expiry``, or None."""
        with self._lock:
            kept = self._messages.get(channel)
            if kept is None:
                return None
            message = None
            while kept and message is None:
                score, message = kept.popleft()
                if self._expired(score):
                    self._count_expired(channel)
                    message = None
            if not kept:
                del self._messages[channel]
        if message is not None and self._waited is not None:
            self._waited.record(max(time.time() - score, 0.0))  # the sender's clock may be ahead of ours
        return message

    def sweep_if_due(self) -> None:
        """Drop expired messages of every channel, including channels nobody receives from any more, at most once
        per ``SWEEP_INTERVAL``."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_sweep < SWEEP_INTERVAL:
                return
            self._last_sweep = now
            for channel, kept in list(self._messages.items()):
                while kept and self._expired(kept[0][0]):
                    kept.popleft()
                    self._count_expired(channel)
                if not kept:
                    del self._messages[channel]

    def keep_sweeping(self) -> None:
        """Sweep every ``SWEEP_INTERVAL`` on the running loop for as long as messages are kept.

        Called when a reader stops: only deliveries sweep, so without this a process whose receives have all gone
        quiet would keep the messages of channels nobody receives from until its next message arrived, however
        long that took. One loop sweeps at a time; when it closes, the next reader to stop takes over.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._messages or (self._sweeper is not None and not self._sweeper.is_closed()):
                return
            self._sweeper = loop
        loop.call_later(SWEEP_INTERVAL, self._sweep_tick)

    def _sweep_tick(self) -> None:
        self.sweep_if_due()
        with self._lock:
            if not self._messages:
                self._sweeper = None
                return
        asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep_tick)

    def held(self) -> int:
        """How many messages are kept now, for every channel."""
        with self._lock:
            return sum(len(kept) for kept in self._messages.values())

    def clear(self) -> None:
        """Forget every message kept (``flush``); waiting receives keep waiting."""
        with self._lock:
            self._messages.clear()

    # Waiting receives -------------------------------------------------------------------------------------------

    def waiter(self, channel: str, key: str) -> _Waiter:
        """Register a receive of ``channel`` (kept in queue ``key``) on the running loop; forget it when done."""
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(channel, {})[waiter] = None
            self._waiting.setdefault(key, {})[waiter] = None
        return waiter

    def forget(self, channel: str, key: str, waiter: _Waiter) -> None:
        with self._lock:
            _remove(self._waiters, channel, waiter)
            _remove(self._waiting, key, waiter)

    def waiting(self, key: str) -> int:
        """Receives waiting, on any loop, for a channel of queue ``key`` (not counting those woken already)."""
        with self._lock:
            return self._still_waiting(key)

    # The one reader of each queue ---------------------------------------------------------------------------------

    def claim(self, key: str) -> bool:
        """Whether the running loop may read queue ``key``: nobody else does (or their loop has closed)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            owner = self._readers.get(key)
            if owner is None or owner is loop or owner.is_closed():
                self._readers[key] = loop
                return True
            return False

    def release_if_idle(self, key: str) -> bool:
        """Give up reading queue ``key`` if no receive waits on it; False means keep reading."""
        with self._lock:
            if self._still_waiting(key):
                return False
            if self._readers.get(key) is asyncio.get_running_loop():
                del self._readers[key]
            return True

    def release(self, key: str, error: BaseException | None = None) -> None:
        """Give up reading queue ``key`` (the loop is closing, or the reader failed with ``error``): the receives
        waiting on it are woken, to claim it on their own loops, or fail with ``error``."""
        with self._lock:
            if self._readers.get(key) is asyncio.get_running_loop():
                del self._readers[key]
            waiters = list(self._waiting.get(key, ()))
        for waiter in waiters:
            waiter.wake(error)

    # Helpers ----------------------------------------------------------------------------------------------------

    def _still_waiting(self, key: str) -> int:
        return sum(1 for waiter in self._waiting.get(key, ()) if not waiter.future.done())

    def _expired(self, score: float) -> bool:
        return time.time() - score > self._expiry

    def _count_expired(self, channel: str) -> None:
        self._counters.expired += 1
        logger.info("a message buffered for %s expired before anyone received it", channel)


def _remove(waiters: dict[str, dict[_Waiter, None]], name: str, waiter: _Waiter) -> None:
    found = waiters.get(name)
    if found is not None:
        found.pop(waiter, None)
        if not found:
            del waiters[name]


class _Waiter:
    """A receive waiting on one event loop, woken (or failed) from whichever thread has news for it."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self, error: BaseException | None = None) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            _resolve(self.future, error)
            return
        # A closed loop refuses the call: its receive has gone with it, and the message stays for the next one.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, self.future, error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
