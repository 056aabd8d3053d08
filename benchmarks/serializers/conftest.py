"""Ratio table for the serializer benchmarks: ours / channels_redis, per group, printed at the end of the run.

Each benchmark files its timings under its group and side through the ``measure`` fixture; when both sides of a
group ran, the summary shows the ratio of their medians and of their minimums (the minimum is the least
disturbed by other work on the machine). Below 1.00 means ours is faster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: group -> side ("ours" or "channels_redis") -> (min, median) seconds per call
_RESULTS: dict[str, dict[str, tuple[float, float]]] = {}
OURS, PEER = "ours", "channels_redis"


@pytest.fixture
def measure(benchmark: Any) -> Callable[[str, Callable[[], Any]], Any]:
    """``measure(side, function)``: benchmark ``function`` and keep its timings for the ratio table."""

    def run(side: str, function: Callable[[], Any]) -> Any:
        result = benchmark(function)
        metadata = getattr(benchmark, "stats", None)
        if metadata:  # None or empty when benchmarks are disabled: then there is nothing to compare
            _RESULTS.setdefault(benchmark.group, {})[side] = (metadata.stats.min, metadata.stats.median)
        return result

    return run


def ratios() -> list[dict[str, Any]]:
    """One row per group that has both sides."""
    rows = []
    for group, sides in sorted(_RESULTS.items()):
        if OURS in sides and PEER in sides:
            (our_min, our_median), (peer_min, peer_median) = sides[OURS], sides[PEER]
            rows.append(
                {
                    "group": group,
                    "ours_median_us": our_median * 1e6,
                    "peer_median_us": peer_median * 1e6,
                    "ratio_median": our_median / peer_median,
                    "ratio_min": our_min / peer_min,
                }
            )
    return rows


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = ratios()
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("serializers: ours / channels_redis (below 1.00 = ours is faster)")
    write(f"{'group':<40} {'ours median':>14} {'peer median':>14} {'ratio median':>13} {'ratio min':>10}")
    for row in rows:
        write(
            f"{row['group']:<40} {row['ours_median_us']:>11.1f} us {row['peer_median_us']:>11.1f} us "
            f"{row['ratio_median']:>13.2f} {row['ratio_min']:>10.2f}"
        )
    # Also kept as JSON, for comparing runs; .benchmarks/ is where pytest-benchmark stores its own files.
    target = Path(os.environ.get("SERIALIZER_RATIOS_FILE", ".benchmarks/serializers-ratios.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    write(f"ratios written to {target}")
