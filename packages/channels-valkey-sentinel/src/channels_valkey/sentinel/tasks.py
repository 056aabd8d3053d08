"""Stopping a background task for sure.

valkey-py reads replies under a timeout; a cancellation that lands while that timeout fires can be swallowed (the
read simply returns nothing) and the task carries on. Its writes wait in ``asyncio.wait_for``, which before Python
3.12 drops a cancellation that arrives as the write completes. Tasks that must end (watchers, readers) are
therefore cancelled again until they have.

A closing event loop does not do that: ``asyncio.run`` (and so every ``async_to_sync`` call) cancels each task left
once and waits for all of them, so one that lost that cancellation and loops keeps the loop, and the call that made
it, from ever returning. A :class:`BackgroundTask` ends anyway.

:func:`every_result` runs calls at once and waits for all before raising a failure, so none is left running behind
the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar, cast

T = TypeVar("T")

#: Seconds to wait for a cancelled task before cancelling it again.
RECANCEL_AFTER = 0.05


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel ``task`` until it is done; exceptions it ends with are left on the task for its owner."""
    if task.done():
        return
    task.cancel()
    await asyncio.sleep(0)  # most tasks end in the step their cancellation wakes them in: no timer needed
    if not task.done():
        await asyncio.wait({task}, timeout=RECANCEL_AFTER)  # its clean-up may take a few steps
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_AFTER)


class BackgroundTask:
    """``work`` as a task on the running loop (``self.work``), which ends when its loop closes even if it loses the
    cancellation that the closing loop gives it.

    A second task, the guard, waits for ``work``. Nothing in it can lose a cancellation, and once cancelled it makes
    sure ``work`` ends: the loop cannot close before both have ended.
    """

    def __init__(self, work: Coroutine[Any, Any, None], name: str) -> None:
        loop = asyncio.get_running_loop()
        self.work = loop.create_task(work, name=name)
        self._guard = loop.create_task(_guard(self.work), name=f"{name} (guard)")

    async def stop(self) -> None:
        """Cancel ``work`` until it has ended; an exception it ended with is left on ``work`` for the owner."""
        await cancel_and_wait(self.work)
        await asyncio.wait({self._guard})


async def _guard(work: asyncio.Task[None]) -> None:
    try:
        await asyncio.wait({work})  # which never passes a cancellation on to ``work``, nor loses one
    except asyncio.CancelledError:
        # A closing loop has cancelled ``work`` too: it gets the time to end by itself first, since cancelling it
        # again at once would cut its clean-up short.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({work}, timeout=RECANCEL_AFTER)
        await cancel_and_wait(work)
        raise


async def wait_at_most(future: asyncio.Future[None], timeout: float) -> None:
    """Wait for ``future`` to be done, or ``timeout`` seconds (then it is done with None); an exception it is done
    with is raised. ``asyncio.wait_for`` would make a task for each wait, ``asyncio.wait`` a future, a set and
    callbacks: a queue reader waits once per message, a receive once per message that is not there yet."""
    timer = asyncio.get_running_loop().call_later(timeout, _time_up, future)
    try:
        await future
    finally:
        timer.cancel()


def _time_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def raise_if_cancelling(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if someone asked to cancel the running task and the request got lost on the way.

    valkey-py's timeouts (a connect, the pool's liveness check) can turn a cancellation into a ConnectionError or
    swallow it, while the task still counts it as requested (``Task.cancelling()``). A task that retries on
    connection errors calls this before it tries again, so that a closing event loop, which cancels each task
    once and waits for it, is not left waiting for ever. ``task`` is the running task, for a caller that checks
    once per message and keeps it at hand: looking it up costs more than the check.
    """
    # Task.cancelling() is Python 3.11+. On 3.10 there is nothing to look at: a task there may have the method
    # (pytest-asyncio's runner backport), but the async_timeout package valkey-py uses on 3.10 cancels the task
    # without ever taking the request back, so a count there does not mean a cancellation is pending.
    if sys.version_info < (3, 11):
        return
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every_result(calls: Sequence[Awaitable[T]]) -> list[T]:
    """The results of ``calls``, run at once, once every one has finished; then the first failure, if any, is raised.

    One shard failing (down, past its retries) does not take the other shards' work with it: it is done and waited
    for, so none is left running behind the error (an ``async_to_sync`` caller's loop closes at once).
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast("list[T]", results)
