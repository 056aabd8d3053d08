"""What a writer knows of its sequential writes while a primary is killed, and which acknowledged write the kill may
have taken: Valkey replicates asynchronously, so the last write the dead primary acknowledged may not have reached
the replica promoted after it (docs/architecture.md, "Delivery guarantees"). Used by the Sentinel kill -9 tests of
the connection package and of the core layer."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field


@dataclass
class AckedWrites:
    """Values written one after the other: those acknowledged (with when each write started and when its ack was
    read), and those whose reply was lost."""

    acked: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    sent_times: list[float] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)

    async def write(
        self, value: int, write: Awaitable[object], lost_reply: tuple[type[BaseException], ...]
    ) -> None:
        """Await ``write`` of ``value`` and log how it ended; an error in ``lost_reply`` makes it uncertain."""
        started = time.monotonic()
        try:
            await write
        except lost_reply:
            self.uncertain.append(value)  # the reply was lost: the write may or may not have been stored
        else:
            self.acked.append(value)
            self.sent_times.append(started)
            self.ack_times.append(time.monotonic())

    def longest_gap_after(self, moment: float) -> float:
        """Longest pause between consecutive acks that overlaps ``moment`` or comes after it."""
        gaps = [later - earlier for earlier, later in itertools.pairwise(self.ack_times) if later >= moment]
        return max(gaps, default=0.0)

    def maybe_unreplicated(self, dead_at: float) -> set[int]:
        """The values a primary dead by ``dead_at`` may have taken with it: its last acknowledged write is the last
        whose ack was read before ``dead_at`` or, when that ack was read after it (the kill and the reply handled
        in the same event loop turn), the last acknowledged one that started before ``dead_at``. A write started
        after the death and retried onto the new primary started later than the first and was acknowledged later
        than the second, so it is neither."""
        last_read = max(
            (v for v, at in zip(self.acked, self.ack_times, strict=True) if at < dead_at), default=None
        )
        last_sent = max(
            (v for v, at in zip(self.acked, self.sent_times, strict=True) if at < dead_at), default=None
        )
        return {value for value in (last_read, last_sent) if value is not None}
