"""This process's OpenTelemetry metrics, for the ``/metrics`` page in Prometheus's text format.

The channels-valkey README's recipe: a ``MeterProvider`` with the Prometheus exporter's reader, set before the
channel layer is made. Each uvicorn worker is a process with its own provider, so ``/metrics`` shows the figures of
the worker that answered (named in the ``X-Chat-Worker`` header); a real deployment scrapes each process.
"""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "start"]


def start() -> None:
    """Collect this process's metrics for :func:`exposition` (call once, before the channel layer is made)."""
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))


def exposition() -> bytes:
    """The metrics now, in Prometheus's text format."""
    return generate_latest(REGISTRY)
