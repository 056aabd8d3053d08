"""Distributions recorded as messages pass: how long a message waited for the receive that took it, and how many
channels a group message reached.

The counts of ``metrics.py`` are read when a metric reader collects; a distribution cannot be, so each value is
recorded as it happens. A :class:`Distribution` keeps a count and a sum (for ``stats()``, at the cost of two
additions) and hands each value to an OpenTelemetry histogram when ``opentelemetry-api`` is installed; without an
SDK the API's proxy instrument drops it for the cost of one attribute test.
"""

from __future__ import annotations

import threading
from typing import Any

from channels_valkey.sentinel.metrics import METER_NAME

__all__ = ["Distribution"]

#: Histograms by name: their unit, description and advised bucket boundaries.
HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "channels_valkey.message.wait": (
        "s",
        "Seconds from send() to the receive() that took the message, for messages that travel in a queue (the "
        "queue's score is the send time, by the sender's clock).",
        (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    ),
    "channels_valkey.group.fanout": (
        "{channel}",
        "Member channels one group message reached: all members on the sending side (core layer), the members in "
        "the receiving process (Pub/Sub layer).",
        (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 20000.0),
    ),
}

_lock = threading.Lock()
_instruments: dict[str, Any] = {}


def _histogram(name: str) -> Any | None:
    """The process's OpenTelemetry histogram ``name`` (made once), or None without ``opentelemetry-api``."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return None
    with _lock:
        found = _instruments.get(name)
        if found is None:
            unit, description, boundaries = HISTOGRAMS[name]
            found = _instruments[name] = metrics.get_meter(METER_NAME).create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=list(boundaries)
            )
        return found


class Distribution:
    """The values of one histogram for one layer instance and set of attributes: count and sum, each to OTel."""

    __slots__ = ("_attributes", "_record", "count", "total")

    def __init__(self, name: str, attributes: dict[str, str]) -> None:
        if name not in HISTOGRAMS:
            raise ValueError(f"unknown histogram {name!r}; known: {', '.join(HISTOGRAMS)}")
        #: Values recorded, and their sum.
        self.count = 0
        self.total = 0.0
        histogram = _histogram(name)
        self._record = None if histogram is None else histogram.record
        self._attributes = {"messaging.system": "valkey", **attributes}

    def record(self, value: float) -> None:
        """Add one value."""
        self.count += 1
        self.total += value
        if self._record is not None:
            self._record(value, self._attributes)

    def snapshot(self) -> dict[str, float]:
        """``{"count": n, "sum": total}``, for ``stats()``."""
        return {"count": self.count, "sum": self.total}
