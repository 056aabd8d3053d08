"""What the OpenTelemetry metrics cost send+receive: the same flow with the SDK collecting and without an SDK.

Run: ``hatch run bench:run benchmarks/metrics``. The layers' instruments are observable (they read the layers' counts
when a reader collects), so the paths messages take record nothing either way; this measures that claim. Each
measurement is a process of its own (``metrics_child.py``: OpenTelemetry has one meter provider per process),
``on`` and ``off`` alternating, and each side's figure is its median. The target (issue #16): under 5% slower with
the SDK and an in-memory reader collecting every 100 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servers.process import ValkeyProcess

CHILD = Path(__file__).with_name("metrics_child.py")
ON, OFF = "metrics on", "metrics off"
ROWS = ["core: producer and consumer", "pubsub: producer and consumer"]
ROUNDS = 5


def _row(group: str, on: dict[str, float], off: dict[str, float]) -> dict[str, Any]:
    ratio = on["value"] / off["value"]
    return {"group": group, "on": on["value"], "off": off["value"], "ratio": ratio, "met": ratio >= 0.95}


COLUMNS = [
    ("metrics cost (issue #16)", 30, lambda row: row["group"]),
    ("on (msg/s)", 11, lambda row: f"{row['on']:,.0f}"),
    ("off (msg/s)", 11, lambda row: f"{row['off']:,.0f}"),
    ("on/off", 6, lambda row: f"{row['ratio']:.3f}"),
    ("target", 7, lambda row: ">= 0.95"),
    ("met", 4, lambda row: "yes" if row["met"] else "NO"),
]


@pytest.fixture(scope="session")
def report(ratio_report: Callable[..., Any]) -> Any:
    return ratio_report(
        "metrics",
        title="send+receive with OpenTelemetry collecting vs without an SDK (processes of their own)",
        columns=COLUMNS,
        row=_row,
        file_env="METRICS_RATIOS_FILE",
        groups=ROWS,
        sides=(ON, OFF),
    )


def _measure(url: str, layer: str, mode: str, messages: int) -> float:
    done = subprocess.run(
        [sys.executable, str(CHILD), url, layer, mode, str(messages)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{layer} with metrics {mode} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_metrics_cost_nothing_measurable(
    valkey_server: ValkeyProcess, report: Any, measuring: bool, size: Callable[..., int], layer: str
) -> None:
    messages = size(5000, quick=300)
    rounds = ROUNDS if measuring else 1
    rates: dict[str, list[float]] = {ON: [], OFF: []}
    for index in range(rounds):
        for mode in ("on", "off") if index % 2 == 0 else ("off", "on"):
            rates[ON if mode == "on" else OFF].append(_measure(valkey_server.url(), layer, mode, messages))
    if measuring:
        row = ROWS[0] if layer == "core" else ROWS[1]
        for side, values in rates.items():
            report.record(row, side, value=statistics.median(values))
