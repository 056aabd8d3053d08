"""``PerLoop``: what an object keeps for each event loop it is used on, forgotten with the loop.

A layer or a connection manager serves any number of event loops (``async_to_sync`` makes one per call), but almost
always one after another, and its hot paths look up the running loop's entry on every send and receive. The entry
found last is kept next to a weak reference to its loop, so the usual lookup is a call of that reference and a
comparison, where a weak dictionary's lookup makes a new weak reference each time.

Not locked: an owner whose entries are made or dropped from several threads holds its own lock around
:meth:`PerLoop.put` and :meth:`PerLoop.pop`. :meth:`PerLoop.get` reads the remembered entry once, so a lookup on one
thread is never answered with another loop's entry, whatever the other threads do meanwhile. The remembered entry
is held until another loop's entry is found or it is popped; the owners here pop an entry as its loop closes.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """Entries by event loop, each dropped when its loop is garbage collected (or :meth:`pop`\\ ped)."""

    __slots__ = ("_entries", "_last")

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def get(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """``loop``'s entry, or None."""
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        entry = self._entries.get(loop)
        if entry is not None:
            self._last = (weakref.ref(loop), entry)
        return entry

    def put(self, loop: asyncio.AbstractEventLoop, entry: T) -> T:
        """Keep ``entry`` for ``loop`` (replacing any) and return it."""
        self._entries[loop] = entry
        self._last = (weakref.ref(loop), entry)
        return entry

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Drop ``loop``'s entry and return it (None when it had none)."""
        entry = self._entries.pop(loop, None)
        last = self._last
        if last is not None and (last[0]() is loop or last[1] is entry):
            self._last = None
        return entry

    def values(self) -> list[T]:
        """The entries of the loops still alive."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
