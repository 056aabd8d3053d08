"""What a command found wrong or worth knowing, by level, and the exit status the findings add up to.

Levels: an *error* means the layer cannot work as configured (exit status 1); a *warning* means it works, but
degraded or at risk (exit status 0, or 1 with ``--strict``); a *note* is worth knowing and never fails a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["error", "warning", "note"]
LEVELS: tuple[Level, ...] = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """One thing found, where (a shard, or None for the whole target), and at which level."""

    level: Level
    message: str
    shard: int | None = None
    where: str | None = None

    def line(self) -> str:
        place = f"shard {self.shard}" if self.shard is not None else ""
        if self.where:
            place = f"{place} ({self.where})" if place else self.where
        return f"{self.level}: {place}: {self.message}" if place else f"{self.level}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {"level": self.level, "shard": self.shard, "message": self.message}


def exit_status(findings: Iterable[Finding], *, strict: bool = False) -> int:
    """1 when something is an error (or, with ``strict``, a warning); else 0."""
    levels = {finding.level for finding in findings}
    return 1 if "error" in levels or (strict and "warning" in levels) else 0


def summary(findings: Iterable[Finding]) -> str:
    """``"1 error, 2 warnings"``, or ``"no problems found"``."""
    found = list(findings)
    parts = []
    for level in LEVELS:
        count = sum(finding.level == level for finding in found)
        if count:
            parts.append(f"{count} {level}{'s' if count > 1 else ''}")
    return ", ".join(parts) if parts else "no problems found"
