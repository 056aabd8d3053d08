"""The soak's RSS: the process's resident set size sampled on a thread of its own, and its trend as a least-squares
slope (imported as ``faults.soak_rss``).

The samples are taken from a thread, not from the event loop, so they stay evenly spaced while the loop is busy
riding out a fault. Their list grows with the run: ``faults.soak_memory`` leaves this module out of tracemalloc's
comparison, so that the test's records never count as the layers' growth.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


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
