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


def raise_if_cancelling() -> None:
    """Raise CancelledError if someone asked to cancel the running task and the request got lost on the way.

    valkey-py's timeouts (a connect, the pool's liveness check) can turn a cancellation into a ConnectionError or
    swallow it, while the task still counts it as requested (``Task.cancelling()``). A task that retries on
    connection errors calls this before it tries again, so that a closing event loop, which cancels each task
    once and waits for it, is not left waiting for ever.
    """
    # Task.cancelling() is Python 3.11+; on 3.10 there is nothing to look at.
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError
