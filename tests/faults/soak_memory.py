"""The soak's tracemalloc figures: snapshots taken at rest and compared line by line, with what is not the layers'
left out (imported as ``faults.soak_memory``).

A snapshot compares what was allocated while tracing; a table allocated before tracing began and reallocated during
the window counts whole, its old block never having been traced. CPython's table of interned strings is one:
``time.get_clock_info``, which every new event loop calls (each ``async_to_sync`` call makes one), interns four
names and drops them, and after some 20,000 loops the table is reallocated to clear them out. In the 30-minute soak
that counted as 1.8 MB of growth at ``asyncio/base_events.py:400`` (the same size as the table it replaced, 2^17
slots); a script calling ``time.get_clock_info`` alone shows it too. :func:`start_tracing` has that table
reallocated under tracing first.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

#: Allocation sites that are not the layers' nor what they use: tracemalloc's own, the import system's (a module
#: imported late, such as an error path's), and the RSS samples (``faults.soak_rss``).
NOT_THE_LAYERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, str(Path(__file__).with_name("soak_rss.py"))),
)
#: Strings interned and dropped to have the interned-strings table reallocated: more than the free slots of a table
#: of 2^18 (a process with up to 87,000 live interned strings; the soak's has 22,000 to 44,000).
PRIMING_STRINGS = 1 << 18


def start_tracing() -> None:
    """Start tracemalloc, then have CPython's interned-strings table reallocated while it traces (about 0.7 s)."""
    tracemalloc.start()
    for number in range(PRIMING_STRINGS):
        sys.intern(f"soak priming {number}")


def snapshot_at_rest() -> tracemalloc.Snapshot:
    """What is allocated now that is kept, not garbage waiting for the cycle collector."""
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(NOT_THE_LAYERS)


def net_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes allocated between the two snapshots and still held at the second, net of what was freed."""
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def largest_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int = 20) -> str:
    """The allocating lines that grew most, largest first: what a failed memory check must show to be understood."""
    stats = sorted(after.compare_to(before, "lineno"), key=lambda stat: stat.size_diff, reverse=True)
    return "largest net growth by allocating line:\n  " + "\n  ".join(str(stat) for stat in stats[:count])
