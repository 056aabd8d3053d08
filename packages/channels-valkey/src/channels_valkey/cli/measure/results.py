"""What a bench run found: per case, the figure of each side and their ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from channels_valkey.cli.measure.cases import Case


@dataclass(frozen=True)
class Comparison:
    """The figures of ours and of channels_redis for one case, measured in the same run on the same server."""

    case: Case
    ours: float
    peer: float

    @property
    def ratio(self) -> float:
        """ours / channels_redis: above 1 means more for throughput, and slower for a latency."""
        return self.ours / self.peer

    @property
    def ours_better(self) -> bool:
        return self.ratio > 1 if self.case.higher_is_better else self.ratio < 1

    def verdict(self) -> str:
        """How ours compares, in words: ``"5.2x faster"``, ``"1.3x slower"`` (latency counts the same way)."""
        factor = self.ratio if self.case.higher_is_better else 1 / self.ratio
        amount, word = (factor, "faster") if factor >= 1 else (1 / factor, "slower")
        return "about the same" if amount < 1.05 else f"{amount:.1f}x {word}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.case.layer,
            "case": self.case.name,
            "unit": self.case.unit,
            "higher_is_better": self.case.higher_is_better,
            "ours": self.ours,
            "channels_redis": self.peer,
            "ratio": self.ratio,
        }


def figure_text(value: float) -> str:
    """A figure as the table and the progress lines show it: whole units with thousands separators."""
    return f"{value:,.0f}"
