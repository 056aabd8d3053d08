"""The layers' OpenTelemetry metrics, read with the SDK's in-memory reader against real servers.

The instruments are observable: they read every live layer's counts when the reader collects. Counts are compared
as differences between two collections, since any layer alive in this process adds to the same data points.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import METER_NAME

Receive = Callable[..., Awaitable[dict[str, Any]]]
#: A data point: the metric's name and its attributes.
Point = tuple[str, frozenset[tuple[str, Any]]]


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """The process's meter provider, with an in-memory reader (OpenTelemetry allows one global provider)."""
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def _collect(reader: InMemoryMetricReader) -> dict[Point, float]:
    data = reader.get_metrics_data()
    points: dict[Point, float] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            if scope.scope.name != METER_NAME:
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, frozenset(point.attributes.items()))] = point.value
    return points


def _point(name: str, layer: str, **attributes: str) -> Point:
    labels = {"messaging.system": "valkey", "channels_valkey.layer": layer}
    labels.update({key.replace("__", "."): value for key, value in attributes.items()})
    return name, frozenset(labels.items())


def _delta(before: dict[Point, float], after: dict[Point, float], point: Point) -> float:
    return after.get(point, 0) - before.get(point, 0)


@pytest.mark.parametrize(
    ("layer_class", "name"), [(ValkeyChannelLayer, "core"), (ValkeyPubSubChannelLayer, "pubsub")]
)
async def test_sent_received_and_held_match_what_went_through(
    reader: InMemoryMetricReader,
    layer_class: type[Any],
    name: str,
    valkey_url: str,
    key_prefix: str,
    receive: Receive,
) -> None:
    gc.collect()  # layers of earlier tests that are gone no longer count
    layer = layer_class(hosts=[valkey_url], prefix=key_prefix)
    try:
        before = _collect(reader)
        normal = f"{key_prefix}jobs"
        member = await layer.new_channel()
        await layer.group_add("room", member)
        for n in range(3):
            await layer.send(normal, {"type": "job", "n": n})
        await layer.group_send("room", {"type": "grouped"})
        await layer.group_send("room", {"type": "grouped"})
        for _ in range(3):
            await receive(layer, normal)
        await receive(layer, member)
        after = _collect(reader)

        sent = "messaging.client.sent.messages"
        consumed = "messaging.client.consumed.messages"
        kind = "channels_valkey__channel_kind"
        operation = "messaging__operation__name"
        assert _delta(before, after, _point(sent, name, **{operation: "send", kind: "normal"})) == 3
        assert _delta(before, after, _point(sent, name, **{operation: "group_send", kind: "group"})) == 2
        assert _delta(before, after, _point(consumed, name, **{operation: "receive", kind: "normal"})) == 3
        assert _delta(before, after, _point(consumed, name, **{operation: "receive", kind: "process"})) == 1
        # The second group message reached the process and waits for its receive.
        assert after[_point("channels_valkey.messages.held", name, **{kind: "process"})] >= 1
        assert _point("channels_valkey.messages.dropped", name, channels_valkey__reason="expired") in after
        # Distributions, as Prometheus histograms' parts: the three queued messages' waits, and the group
        # messages' fan-out (counted on sending by the core layer; by the Pub/Sub layer where each arrives, so the
        # second may still be on its way).
        waited = "channels_valkey.message.wait"
        assert _delta(before, after, _point(f"{waited}.count", name, **{kind: "normal"})) == 3
        assert _delta(before, after, _point(f"{waited}.bucket", name, **{kind: "normal", "le": "+Inf"})) == 3
        assert _delta(before, after, _point(f"{waited}.sum", name, **{kind: "normal"})) >= 0
        fanout = _delta(before, after, _point("channels_valkey.group.fanout.count", name))
        assert fanout == 2 if name == "core" else 1 <= fanout <= 2
        assert _delta(before, after, _point("channels_valkey.group.fanout.bucket", name, le="1")) == fanout
        shard = {"channels_valkey__shard": "0"}
        assert after[_point("channels_valkey.connections.open", name, **shard)] >= 1
        assert _point("channels_valkey.connections.reconnects", name, **shard) in after
        assert _point("channels_valkey.failovers", name, **shard) in after
        assert after[_point("channels_valkey.server.restarts", name, **shard)] == 0
    finally:
        await layer.flush()
        await layer.close_pools()
