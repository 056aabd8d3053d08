"""OpenTelemetry metrics of the channel layers, read from their counts when a metric reader collects.

The instruments are observable: nothing is recorded on the paths messages take. A layer keeps its counts as plain
integers (its ``stats()``), and the callbacks here read every live layer's counts when the application's
OpenTelemetry SDK collects. So the layers pay nothing for metrics when ``opentelemetry-api`` is not installed, and
nothing measurable when it is but no SDK is configured (the API's no-op provider never calls back).

Names follow the OpenTelemetry messaging semantic conventions where they fit (``messaging.client.sent.messages``,
``messaging.client.consumed.messages``, with ``messaging.system`` and ``messaging.operation.name``); the rest are
``channels_valkey.*``. Attributes are the layer (``core`` / ``pubsub``), the channel kind (``normal``,
``process``, ``group``), the drop reason and the shard index, never a channel or group name (their number is
unbounded). The distributions (wait time, group fan-out) are kept in buckets as messages pass (``histograms.py``)
and read like the rest, as the three parts of a Prometheus histogram: ``.bucket`` (by upper bound ``le``),
``.count`` and ``.sum``.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

__all__ = ["METER_NAME", "observe"]

#: The meter the instruments are created on (``MeterProvider.get_meter``).
METER_NAME = "channels_valkey"
#: ``messaging.system`` of every data point.
SYSTEM = "valkey"


class Observed(Protocol):
    """A layer as the metrics read it: its ``stats()`` snapshot."""

    def stats(self) -> dict[str, Any]: ...


_layers: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_instruments: list[Any] = []


def observe(layer: Observed) -> None:
    """Report ``layer``'s counts in the metrics for as long as it lives; nothing when OpenTelemetry is absent."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return
    with _lock:
        _layers.add(layer)
        if _instruments:
            return
        meter = metrics.get_meter(METER_NAME)
        for name, points, unit, description in (*_COUNTERS, *_HISTOGRAMS):
            _instruments.append(
                meter.create_observable_counter(
                    name, callbacks=[_reading(points)], unit=unit, description=description
                )
            )
        for name, points, unit, description in _GAUGES:
            _instruments.append(
                meter.create_observable_up_down_counter(
                    name, callbacks=[_reading(points)], unit=unit, description=description
                )
            )


Points = Iterator[tuple[float, dict[str, str]]]


def _sent(stats: dict[str, Any]) -> Points:
    for kind, count in stats["sent"].items():
        operation = "group_send" if kind == "group" else "send"
        yield count, {"messaging.operation.name": operation, "channels_valkey.channel_kind": kind}


def _received(stats: dict[str, Any]) -> Points:
    for kind, count in stats["received"].items():
        yield count, {"messaging.operation.name": "receive", "channels_valkey.channel_kind": kind}


def _dropped(stats: dict[str, Any]) -> Points:
    for reason, count in stats["dropped"].items():
        yield count, {"channels_valkey.reason": reason}


def _held(stats: dict[str, Any]) -> Points:
    for kind, count in stats["held"].items():
        yield count, {"channels_valkey.channel_kind": kind}


def _shard_figure(figure: str) -> Callable[[dict[str, Any]], Points]:
    def points(stats: dict[str, Any]) -> Points:
        for index, figures in stats["shards"].items():
            yield figures[figure], {"channels_valkey.shard": index}

    return points


#: An instrument: name, how a layer's stats give its points, unit, description.
Instrument = tuple[str, Callable[[dict[str, Any]], Points], str, str]

_COUNTERS: tuple[Instrument, ...] = (
    (
        "messaging.client.sent.messages",
        _sent,
        "{message}",
        "Messages sent: send() calls that succeeded, and group_send() calls (kind group).",
    ),
    ("messaging.client.consumed.messages", _received, "{message}", "Messages handed to a receive()."),
    (
        "channels_valkey.messages.dropped",
        _dropped,
        "{message}",
        "Messages the layer dropped on purpose, by reason (each also logged).",
    ),
    (
        "channels_valkey.connections.reconnects",
        _shard_figure("reconnects"),
        "{reconnect}",
        "Connection failures after which the layer connected to the shard again.",
    ),
    (
        "channels_valkey.failovers",
        _shard_figure("failovers"),
        "{failover}",
        "Moves of a shard's primary that the layer followed (Sentinel switch, cluster slot map).",
    ),
    (
        "channels_valkey.server.restarts",
        _shard_figure("restarts"),
        "{restart}",
        "Restarts of a shard's server that the layer noticed (a new run_id at the same address): what the server "
        "held, queued messages and group memberships, is gone.",
    ),
)


def _distribution(key: str, part: str, kind: bool) -> Callable[[dict[str, Any]], Points]:
    """Points of one part (``buckets``, ``count``, ``sum``) of the distribution ``stats[key]`` (by channel kind when
    ``kind``): a bucket's point per upper bound, under ``le``."""

    def points(stats: dict[str, Any]) -> Points:
        found = stats[key]
        by_kind = found.items() if kind else [(None, found)]
        for kind_name, distribution in by_kind:
            labels = {} if kind_name is None else {"channels_valkey.channel_kind": kind_name}
            if part == "buckets":
                for bound, count in distribution["buckets"].items():
                    yield count, {**labels, "le": bound}
            else:
                yield distribution[part], labels

    return points


def _histogram_parts(name: str, key: str, unit: str, what: str, *, kind: bool) -> tuple[Instrument, ...]:
    return (
        (
            f"{name}.bucket",
            _distribution(key, "buckets", kind),
            "{value}",
            f"{what}: how many were at most the bound ``le`` (cumulative, as Prometheus histogram buckets).",
        ),
        (f"{name}.count", _distribution(key, "count", kind), "{value}", f"{what}: how many."),
        (f"{name}.sum", _distribution(key, "sum", kind), unit, f"{what}: their sum."),
    )


#: The distributions, as the three parts of a Prometheus histogram (``histogram_quantile`` reads the buckets).
_HISTOGRAMS: tuple[Instrument, ...] = (
    *_histogram_parts(
        "channels_valkey.message.wait",
        "waited",
        "s",
        "Seconds from send() to the receive() that took a message travelling in a queue",
        kind=True,
    ),
    *_histogram_parts(
        "channels_valkey.group.fanout",
        "fanout",
        "{channel}",
        "Member channels one group message reached",
        kind=False,
    ),
)

_GAUGES: tuple[Instrument, ...] = (
    (
        "channels_valkey.messages.held",
        _held,
        "{message}",
        "Messages in this process waiting for a receive() now.",
    ),
    (
        "channels_valkey.connections.open",
        _shard_figure("open_connections"),
        "{connection}",
        "Connections open to the shard now, over every event loop of this process.",
    ),
)


def _reading(points: Callable[[dict[str, Any]], Points]) -> Callable[[Any], Iterable[Any]]:
    """An instrument's callback: the points of every live layer, summed over layers with the same attributes."""

    def callback(options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        totals: defaultdict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        with _lock:
            layers = list(_layers)
        for layer in layers:
            stats = layer.stats()
            for value, attributes in points(stats):
                labelled = {"messaging.system": SYSTEM, "channels_valkey.layer": stats["layer"], **attributes}
                totals[tuple(sorted(labelled.items()))] += value
        return [Observation(value, dict(attributes)) for attributes, value in totals.items()]

    return callback
