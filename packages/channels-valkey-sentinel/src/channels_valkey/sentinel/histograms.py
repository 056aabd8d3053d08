"""Distributions kept as messages pass: how long a message waited for the receive that took it, and how many
channels a group message reached.

A :class:`Distribution` counts each value into fixed buckets, as a Prometheus histogram does, plus a count and a
sum: a bisection and three additions per value. The OpenTelemetry metrics read the buckets when a reader collects
(``metrics.py``), like every other count, so the paths messages take call no OpenTelemetry code. (The SDK's
``Histogram.record`` costs about 9 us per value here, which at several thousand messages a second is more than the
5% the metrics may cost.)
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BOUNDARIES", "Distribution"]

#: Each distribution's bucket boundaries (upper bounds, inclusive), by the name its metrics carry.
BOUNDARIES: dict[str, tuple[float, ...]] = {
    # Seconds from send() to the receive() that took the message, for messages that travel in a queue (the
    # queue's score is the send time, by the sender's clock).
    "channels_valkey.message.wait": (
        0.001,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
    ),
    # Member channels one group message reached: every member on the sending side (core layer), the members in the
    # receiving process (Pub/Sub layer).
    "channels_valkey.group.fanout": (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 20000),
}


class Distribution:
    """The values of one distribution for one layer instance and channel kind: bucket counts, count, sum."""

    __slots__ = ("_buckets", "boundaries", "count", "name", "total")

    def __init__(self, name: str) -> None:
        found = BOUNDARIES.get(name)
        if found is None:
            raise ValueError(f"unknown distribution {name!r}; known: {', '.join(BOUNDARIES)}")
        self.name = name
        self.boundaries = found
        #: Values recorded, and their sum.
        self.count = 0
        self.total = 0.0
        #: Values per bucket: ``_buckets[i]`` those in (boundaries[i-1], boundaries[i]]; the last, above them all.
        self._buckets = [0] * (len(found) + 1)

    def record(self, value: float) -> None:
        """Add one value."""
        self.count += 1
        self.total += value
        self._buckets[bisect_left(self.boundaries, value)] += 1

    def snapshot(self) -> dict[str, object]:
        """``{"count": n, "sum": total, "buckets": {upper bound: values at or below it}}``, cumulative like
        Prometheus's ``le`` buckets, the last bound being ``"+Inf"``; for ``stats()`` and the metrics."""
        cumulative: dict[str, int] = {}
        running = 0
        for bound, count in zip((*map(_label, self.boundaries), "+Inf"), self._buckets, strict=True):
            running += count
            cumulative[bound] = running
        return {"count": self.count, "sum": self.total, "buckets": cumulative}


def _label(bound: float) -> str:
    return f"{bound:g}"
