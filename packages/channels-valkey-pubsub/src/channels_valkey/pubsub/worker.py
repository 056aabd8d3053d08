"""Reading a worker queue: one reader per normal channel and event loop, popping only while a receive waits.

The queue is a sorted set (score = send time). The reader pops with ``BZPOPMIN`` through
:meth:`channels_valkey.sentinel.Shard.blocking_call`, so a reader stopped mid-pop gets what the server popped
handed back instead of losing it. Receivers are never the ones popping: a receive that is cancelled after a message
was handed to it gives the message back, and the reader offers it to the next local receive or puts it back at the
head of the queue with its original score, before popping anything newer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel import ResiliencePolicy, ShardUnavailable, cancel_and_wait, raise_if_cancelling

logger = logging.getLogger("channels_valkey.pubsub")

#: A popped queue member and its score.
Entry = tuple[bytes, float]


class QueueSource(Protocol):
    """What a reader needs from the layer."""

    policy: ResiliencePolicy

    def queue_enabled(self, shard: int) -> bool: ...

    async def pop(
        self, shard: int, key: str, on_interrupted: Callable[[Entry], Awaitable[None]]
    ) -> Entry | None: ...

    async def requeue(self, shard: int, key: str, entries: list[Entry]) -> None: ...

    def fall_back(self, shard: int, error: BaseException) -> None: ...

    def open_entry(self, channel: str, entry: Entry) -> dict[str, Any] | None: ...


class Waiters(Protocol):
    """The receives waiting on one channel (a ``LocalChannel``)."""

    name: str

    def hand_over(self, item: Popped) -> bool: ...

    def waiting(self) -> int: ...

    def fail(self, error: BaseException) -> None: ...


@dataclass(frozen=True, eq=False)
class Popped:
    """A message taken from a worker queue, with what it takes to put it back."""

    message: dict[str, Any]
    entry: Entry
    reader: QueueReader


class QueueReader:
    """Pops ``key`` on ``shard`` for the receives waiting on ``channel``."""

    def __init__(self, source: QueueSource, channel: Waiters, shard: int, key: str) -> None:
        self.source = source
        self.channel = channel
        self.shard = shard
        self.key = key
        #: Messages whose receive went away: offered to the next receive, or put back, before the next pop.
        self.returned: deque[Popped] = deque()
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"channels-valkey queue reader {self.key}"
            )

    def give_back(self, popped: Popped) -> None:
        """A message a cancelled receive had taken: first in line again."""
        self.returned.appendleft(popped)
        self.ensure_running()

    async def _run(self) -> None:
        policy = self.source.policy
        backoff = policy.backoff()
        failures = 0
        failing_since = 0.0
        while True:
            raise_if_cancelling()  # a cancellation valkey-py turned into a connection error must still stop us
            if self.returned:
                await self._settle()
            if not self.channel.waiting() or not self.source.queue_enabled(self.shard):
                return
            try:
                entry = await self.source.pop(self.shard, self.key, self._put_back)
            except valkey_errors.NoPermissionError as error:
                self.source.fall_back(self.shard, error)
                return
            except (valkey_errors.ValkeyError, OSError) as error:
                failures += 1
                failing_since = failing_since or time.monotonic()
                gave_up = time.monotonic() - failing_since > policy.retry_deadline
                if isinstance(error, ShardUnavailable) or gave_up or failures > policy.retry_attempts:
                    self.channel.fail(error)
                    return
                logger.warning("receiving from %s failed (%s); retry %d", self.key, error, failures)
                await asyncio.sleep(backoff.compute(failures))
                continue
            failures = 0
            failing_since = 0.0
            if entry is None:
                continue
            message = self.source.open_entry(self.channel.name, entry)
            if message is None:
                continue
            popped = Popped(message, entry, self)
            if not self.channel.hand_over(popped):
                # Its receive was cancelled while the pop was under way.
                self.returned.append(popped)

    async def _settle(self) -> None:
        while self.returned and self.channel.hand_over(self.returned[0]):
            self.returned.popleft()
        if self.returned:
            entries = [popped.entry for popped in self.returned]
            # Cleared only once they are back; putting a member back twice with its score is harmless.
            await self.source.requeue(self.shard, self.key, entries)
            self.returned.clear()

    def _put_back(self, entry: Entry) -> Awaitable[None]:
        return self.source.requeue(self.shard, self.key, [entry])

    async def aclose(self) -> None:
        """Stop (what the pop in progress took goes back) and put back whatever was returned."""
        if self.task is not None:
            await cancel_and_wait(self.task)
        if self.returned:
            await self.source.requeue(self.shard, self.key, [popped.entry for popped in self.returned])
            self.returned.clear()
