"""A terminal redrawn in place with plain ANSI (VT100) sequences, for ``channels-valkey top``.

Why not curses: it needs a terminfo entry for ``$TERM``, switches the keyboard into modes that every way out must
undo, and clears the view when it ends. The sequences here work on every terminal emulator in use, leave the
keyboard alone, and the only thing to restore is the cursor; the last view stays on the screen after Ctrl-C, and
no alternate screen is entered, so none can be left behind.

Each frame moves the cursor home and writes its lines over the previous ones, erasing what is left of each line
and below the last, instead of clearing the screen first (which flickers). Lines are cut to the terminal's width
and the frame to its height, read again at every frame, since a wrapped or scrolled line would break the next
redraw.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TextIO

HOME = "\x1b[H"
CLEAR_SCREEN = "\x1b[2J"
ERASE_LINE_END = "\x1b[K"
ERASE_BELOW = "\x1b[J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"


class Screen:
    """A terminal on ``stream`` that shows one frame of lines at a time; :meth:`close` gives the cursor back."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._open = False

    def open(self) -> None:
        """Hide the cursor and clear the screen for the first frame."""
        self.stream.write(HIDE_CURSOR + HOME + CLEAR_SCREEN)
        self.stream.flush()
        self._open = True

    def draw(self, lines: Sequence[str]) -> None:
        """Show ``lines`` in place of the previous frame, cut to the terminal's size."""
        columns, rows = shutil.get_terminal_size()
        shown = list(lines)
        # The last row stays free: a newline written there would scroll the whole frame up by one.
        if len(shown) > rows - 1:
            hidden = len(shown) - (rows - 2)
            shown = [
                *shown[: max(0, rows - 2)],
                f"({hidden} more lines: a taller terminal, or a lower --limit)",
            ]
        frame = "".join(line[:columns] + ERASE_LINE_END + "\n" for line in shown)
        self.stream.write(HOME + frame + ERASE_BELOW)
        self.stream.flush()

    def close(self) -> None:
        """Show the cursor again, below the last frame; safe to call when never opened or already closed."""
        if not self._open:
            return
        self._open = False
        self.stream.write(SHOW_CURSOR)
        self.stream.flush()
