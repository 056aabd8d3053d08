"""The soak's memory figures: the process's RSS sampled on a thread of its own, its trend as a least-squares slope,
and tracemalloc snapshots taken at rest and compared line by line (imported as ``faults.soak_memory``).

RSS is sampled from a thread, not from the event loop, so the samples stay evenly spaced while the loop is busy
riding out a fault. The sampler's own list of samples grows with the run; this module is left out of the
tracemalloc comparison (:data:`NOT_THE_LAYERS`) so that the test's records never count as the layers' growth.
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

import psutil

#: Allocation sites that are not the layers' nor what they use: tracemalloc's own, the import system's (a module
#: imported late, such as an error path's), and this module's samples.
NOT_THE_LAYERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, __file__),
)


def snapshot_at_rest() -> tracemalloc.Snapshot:
    """What is allocated now that is kept, not garbage waiting for the cycle collector."""
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(NOT_THE_LAYERS)


def net_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes allocated between the two snapshots and still held at the second, net of what was freed."""
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def largest_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int = 20) -> str:
    """The allocating lines that grew most, largest first: what a failed memory check must show to be understood."""
    stats = sorted(after.compare_to(before, "lineno"), key=lambda stat: stat.size_diff, reverse=True)
    return "largest net growth by allocating line:\n  " + "\n  ".join(str(stat) for stat in stats[:count])


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


@dataclass
class RssSampler:
    """This process's resident set size every ``interval`` seconds, as ``(monotonic time, bytes)``."""

    interval: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        process = psutil.Process()

        def sample() -> None:
            while True:
                self.samples.append((time.monotonic(), float(process.memory_info().rss)))
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=sample, name="soak RSS sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def since(self, start: float, end: float = float("inf")) -> list[tuple[float, float]]:
        """The samples taken from ``start`` to ``end`` (monotonic times)."""
        return [(at, rss) for at, rss in self.samples if start <= at <= end]
