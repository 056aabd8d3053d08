"""Stopping a background task for sure.

valkey-py reads replies under a timeout; a cancellation that lands while that timeout fires can be swallowed (the
read simply returns nothing) and the task carries on. Tasks that must end (watchers, readers) are therefore
cancelled again until they have.
"""

from __future__ import annotations

import asyncio

#: Seconds to wait for a cancelled task before cancelling it again.
RECANCEL_AFTER = 0.05


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel ``task`` until it is done; exceptions it ends with are left on the task for its owner."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_AFTER)
