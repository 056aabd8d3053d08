"""The chart of ``channels-valkey bench --plot``: one bar per case, its ratio ours / channels_redis.

Bars start at the 1.0 line (as fast as channels_redis) on a logarithmic axis, so that twice as fast and half as
fast are equally long; a bar is green where ours does better (more per second, or a shorter round trip) and red
where it does worse. Drawn with matplotlib's Agg renderer: no display, no global pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from channels_valkey.cli.measure.exceptions import MissingExtra
from channels_valkey.cli.measure.results import Comparison

#: Bar colours: ours does better, ours does worse.
BETTER_COLOUR = "#2a9d8f"
WORSE_COLOUR = "#e76f51"


def require_matplotlib() -> None:
    """Raise :class:`MissingExtra` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("matplotlib", "--plot draws its chart with matplotlib") from exc


def plot_ratios(comparisons: Sequence[Comparison], path: Path, title: str) -> None:
    """Write the bar chart of ``comparisons`` to ``path`` as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    ratios = [comparison.ratio for comparison in comparisons]
    labels = [
        f"{c.case.layer}: {c.case.name}\n({c.case.unit}, {'higher' if c.case.higher_is_better else 'lower'} is better)"
        for c in comparisons
    ]
    figure = Figure(figsize=(10, 1.6 + 0.65 * len(comparisons)), layout="constrained")
    axes = figure.add_subplot()
    rows = range(len(comparisons))
    bars = axes.barh(
        rows,
        [ratio - 1 for ratio in ratios],
        left=1,
        height=0.6,
        color=[BETTER_COLOUR if c.ours_better else WORSE_COLOUR for c in comparisons],
    )
    axes.bar_label(bars, labels=[f"{ratio:.2f}" for ratio in ratios], padding=4)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Symmetric around 1.0, with room for the labels at the ends of the bars.
    reach = max(abs(math.log10(ratio)) for ratio in ratios) * 1.35 + 0.1
    axes.set_xlim(10**-reach, 10**reach)
    axes.set_yticks(list(rows), labels)
    axes.invert_yaxis()
    axes.set_xlabel("ours / channels_redis (log scale; the line at 1.0 is a tie)")
    axes.set_title(title)
    axes.grid(axis="x", which="both", alpha=0.25)
    figure.legend(
        handles=[
            Patch(color=BETTER_COLOUR, label="ours does better"),
            Patch(color=WORSE_COLOUR, label="ours does worse"),
        ],
        loc="outside lower center",
        ncols=2,
    )
    figure.savefig(path, format="png", dpi=100)
