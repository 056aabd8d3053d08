"""One measurement of ``python metrics_child.py URL LAYER MODE MESSAGES``: messages/s of a producer and a consumer
on one normal channel, with OpenTelemetry's SDK collecting the layers' metrics every 100 ms (MODE ``on``) or
with no SDK configured (``off``: the API's no-op provider). A process of its own per measurement, because
OpenTelemetry allows one global meter provider per process. Prints the rate, or fails if a message went astray.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checked_flows import Stream, produce_and_consume

COLLECT_EVERY = 0.1


def build(url: str, layer: str) -> Any:
    prefix = f"bench-metrics-{uuid.uuid4().hex[:8]}-"
    if layer == "core":
        from channels_valkey.core import ValkeyChannelLayer

        return ValkeyChannelLayer(hosts=[url], prefix=prefix, capacity=10_000)
    from channels_valkey.pubsub import ValkeyPubSubChannelLayer

    return ValkeyPubSubChannelLayer(hosts=[url], prefix=prefix, capacity=10_000)


async def main(url: str, layer_kind: str, mode: str, messages: int) -> float:
    reader = None
    if mode == "on":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    layer = build(url, layer_kind)
    stream = Stream(layer, "bench.metrics")

    async def collect() -> None:
        while reader is not None:
            await asyncio.sleep(COLLECT_EVERY)
            reader.get_metrics_data()

    collecting = asyncio.ensure_future(collect())
    try:
        await produce_and_consume(stream, 200)  # warm-up: connections, scripts
        started = time.perf_counter()
        delivered = await produce_and_consume(stream, messages)
        elapsed = time.perf_counter() - started
    finally:
        collecting.cancel()
        await layer.flush()
        await layer.close_pools()
    if delivered != messages:
        raise SystemExit(f"{delivered} of {messages} messages came as sent")
    return messages / elapsed


if __name__ == "__main__":
    url, layer_kind, mode, messages = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(f"{asyncio.run(main(url, layer_kind, mode, messages)):.1f}")
