"""Ratio table for the serializer benchmarks: ours / channels_redis, per group, printed at the end of the run.

Each benchmark files its timings under its group and side through the ``measure`` fixture; when both sides of a
group ran, the summary shows the ratio of their medians and of their minimums (the minimum is the least
disturbed by other work on the machine). Below 1.00 means ours is faster. The table itself is printed by
benchmarks/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    ("group", 40, lambda row: row["group"]),
    ("ours median", 14, lambda row: f"{row['ours_median_us']:.1f} us"),
    ("peer median", 14, lambda row: f"{row['peer_median_us']:.1f} us"),
    ("ratio median", 13, lambda row: f"{row['ratio_median']:.2f}"),
    ("ratio min", 10, lambda row: f"{row['ratio_min']:.2f}"),
]


def _row(group: str, ours: dict[str, float], peer: dict[str, float]) -> dict[str, Any]:
    return {
        "group": group,
        "ours_median_us": ours["median"] * 1e6,
        "peer_median_us": peer["median"] * 1e6,
        "ratio_median": ours["median"] / peer["median"],
        "ratio_min": ours["min"] / peer["min"],
    }


@pytest.fixture(scope="session")
def serializer_report(ratio_report: Callable[..., Any]) -> Any:
    return ratio_report(
        "serializers",
        title="serializers: ours / channels_redis (below 1.00 = ours is faster)",
        columns=COLUMNS,
        row=_row,
        file_env="SERIALIZER_RATIOS_FILE",
    )


@pytest.fixture
def measure(benchmark: Any, serializer_report: Any) -> Callable[[str, Callable[[], Any]], Any]:
    """``measure(side, function)``: benchmark ``function`` and keep its timings for the ratio table."""

    def run(side: str, function: Callable[[], Any]) -> Any:
        result = benchmark(function)
        metadata = getattr(benchmark, "stats", None)
        if metadata:  # None or empty when benchmarks are disabled: then there is nothing to compare
            serializer_report.record(
                benchmark.group, side, min=metadata.stats.min, median=metadata.stats.median
            )
        return result

    return run
