"""How every command prints its result: a readable table by default, one JSON document with ``--json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header; None prints as ``-``."""
    cells = [[str(header) for header in headers]]
    cells += [["-" if value is None else str(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_json(document: Any) -> str:
    """``document`` as indented JSON; values JSON cannot hold (bytes, sets) are written as their ``str``."""
    return json.dumps(document, indent=2, sort_keys=False, default=str)


def seconds_text(seconds: float | None) -> str | None:
    """A duration for a table cell (``2.5 s``); None, which a table prints as ``-``, when unknown."""
    return None if seconds is None else f"{seconds:.1f} s"
