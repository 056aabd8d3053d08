"""The progress display of ``channels-valkey bench`` on stderr, so that stdout holds only the result.

One line per case. On a terminal the line is drawn when the case starts, rewritten in place as its rounds go by
(a few times a second at most) and ends with the figures; anywhere else (a pipe, a CI log) each case prints one
plain line when it is done.
"""

from __future__ import annotations

import time
from typing import TextIO

from channels_valkey.cli.measure.cases import Case
from channels_valkey.cli.measure.results import Comparison, figure_text

#: Carriage return, then erase to the end of the line: the terminal's cursor is back at the start of a blank line.
_REWRITE = "\r\x1b[K"
#: Seconds between two rewrites of a line while its rounds go by.
_REDRAW_INTERVAL = 0.2


class Progress:
    """Reports the cases of a run on ``stream``, rewriting the current line when ``stream`` is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._label = ""
        self._unit = ""
        self._line_open = False
        self._drawn_at = 0.0

    def case_started(self, index: int, total: int, case: Case) -> None:
        self._label = f"[{index}/{total}] {case.layer:<6} {case.name}"
        self._unit = case.unit
        self._draw(f"{self._label}: preparing both sides...")

    def rounds_done(self, done: int, total: int) -> None:
        """Both sides have run ``done`` of their ``total`` rounds."""
        if time.monotonic() - self._drawn_at >= _REDRAW_INTERVAL:
            self._draw(f"{self._label}: round {done} of {total}, both sides in turn...")

    def case_finished(self, comparison: Comparison) -> None:
        line = (
            f"{self._label}: ours {figure_text(comparison.ours)}, channels_redis {figure_text(comparison.peer)} "
            f"{self._unit}; ours/channels_redis {comparison.ratio:.2f} ({comparison.verdict()})"
        )
        self.stream.write((_REWRITE if self.live else "") + line + "\n")
        self.stream.flush()
        self._line_open = False

    def end_line(self) -> None:
        """End a line left open on the terminal, so that a message printed next starts on a line of its own."""
        if self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False

    def _draw(self, line: str) -> None:
        """Show ``line`` in place of the current one, on a terminal only."""
        if not self.live:
            return
        self.stream.write(_REWRITE + line)
        self.stream.flush()
        self._line_open = True
        self._drawn_at = time.monotonic()
