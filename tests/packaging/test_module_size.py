"""No module of the five distributions is over :data:`MOST_LINES` lines (docs/architecture.md, "Module map").

A module that grows past it holds more than one concept; split it by what it holds rather than raise the limit.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MOST_LINES = 450


def _modules() -> list[Path]:
    return sorted(REPO.glob("packages/*/src/channels_valkey/**/*.py"))


def test_there_are_modules_to_measure() -> None:
    assert len(_modules()) > 40, "no modules found: is the repository layout still packages/*/src/?"


def test_no_module_is_over_the_limit() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _modules()}
    over = {path.relative_to(REPO).as_posix(): lines for path, lines in sizes.items() if lines > MOST_LINES}
    assert not over, f"modules over {MOST_LINES} lines: {over}"
