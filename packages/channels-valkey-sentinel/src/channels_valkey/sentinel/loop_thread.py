"""An event loop in a thread of its own, for code that has none (a Django view, a Celery task, a script).

``async_to_sync`` makes an event loop per call; the layers' synchronous API (:mod:`~channels_valkey.sentinel.
sync_layer`) runs its calls on one long-lived loop instead, so their connections, Sentinel watchers and cluster
slot maps are made once and shared by every thread. Calls from many threads at once are coroutines on that one
loop: their commands pipeline on each shard's lane.

The thread is a daemon, started at the first call, and started again in a child process after ``fork`` (a thread
does not survive a fork; the child never touches its parent's loop or connections).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")
#: Most seconds :meth:`LoopThread.stop` waits for the loop's tasks left after the last coroutine to end.
WIND_DOWN_TIMEOUT = 5.0


class LoopThread:
    """Runs coroutines on a private event loop, in a daemon thread named ``name``, for callers in other threads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and return its result (or raise its exception) in the calling thread.

        Raises RuntimeError, without running it, when called from a thread whose event loop is running: blocking
        that loop until the call ends would stall everything else on it (``await`` the coroutine there instead).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise RuntimeError(
                "the synchronous API of a channel layer was called from a running event loop, which it would "
                "block until the call ends: await the layer's coroutine method instead"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise asyncio.CancelledError from None

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the loop without waiting for it; any thread may call this, a running loop's too."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop, while its thread runs (None before the first call and after :meth:`stop`)."""
        with self._lock:
            return self._loop if self._pid == os.getpid() else None

    def stop(self, last: Coroutine[Any, Any, object] | None = None) -> None:
        """Run ``last`` on the loop (closing what lives there), then stop the thread and close the loop."""
        taken = self._take(last)
        if taken is None:
            return
        loop, thread = taken
        if thread is threading.current_thread():
            # Called from a coroutine on the loop itself: waiting would never end.
            _end_soon(loop, last)
            return
        try:
            if last is not None:
                asyncio.run_coroutine_threadsafe(last, loop).result()
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_wind_down(WIND_DOWN_TIMEOUT), loop).result(
                    WIND_DOWN_TIMEOUT + 1
                )
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def stop_soon(self, last: Coroutine[Any, Any, object] | None = None) -> None:
        """:meth:`stop` without waiting for it, for a finalizer, which may run on any thread (an event loop's too):
        ``last`` runs on the loop, the tasks left are wound down, and the thread closes its loop as it ends."""
        taken = self._take(last)
        if taken is not None:
            _end_soon(taken[0], last)

    def _take(
        self, last: Coroutine[Any, Any, object] | None
    ) -> tuple[asyncio.AbstractEventLoop, threading.Thread] | None:
        """The loop and its thread, forgotten here so that the next call starts new ones; None, with ``last``
        closed unrun, when none runs in this process."""
        with self._lock:
            loop, thread = (self._loop, self._thread) if self._pid == os.getpid() else (None, None)
            self._loop = self._thread = None
        if loop is None or thread is None:
            if last is not None:
                last.close()
            return None
        return loop, thread

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # First call, or the first in a child process: its parent's thread did not come along.
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=_serve, args=(loop, ready), name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop


def _end_soon(loop: asyncio.AbstractEventLoop, last: Coroutine[Any, Any, object] | None) -> None:
    """Run ``last`` on ``loop``, wind the loop down and stop it, without waiting; its thread closes it then."""

    async def end() -> None:
        try:
            if last is not None:
                await last
        finally:
            await _wind_down(WIND_DOWN_TIMEOUT)
            loop.stop()

    ending = end()
    try:
        asyncio.run_coroutine_threadsafe(ending, loop)
    except RuntimeError:  # closed meanwhile by stop()
        ending.close()
        if last is not None:
            last.close()


async def _wind_down(timeout: float | None = None) -> None:
    """What ``asyncio.run`` does before it closes a loop: the tasks left (but the caller's) are cancelled and awaited
    for at most ``timeout`` seconds, so that what they hold is closed, and the transports closed meanwhile get a loop
    step to finish closing."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=timeout)
    await asyncio.sleep(0)


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()
    # Stopped: by stop(), which closes the loop after joining this thread (closing twice does nothing), or by
    # stop_soon(), which waits for nothing.
    loop.close()
