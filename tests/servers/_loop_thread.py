"""An asyncio event loop of its own in a daemon thread, shared by the test proxies.

The proxies must keep forwarding while a test's own loop is blocked (a sync test, a blocking call, an
``async_to_sync`` bridge that starts a fresh loop per call), so they cannot live on the test's loop. Every call into
the thread waits for the loop to finish the work, which lets the control methods promise "in effect on return".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Seconds a control call may wait for the loop thread before it is reported as stuck.
CALL_TIMEOUT = 10.0


class LoopThread:
    """Runs one event loop forever in a daemon thread; other threads hand it coroutines and wait for the result."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[str] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name}: the loop thread is not running (call start() first)")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._loop is not None

    @property
    def errors(self) -> list[str]:
        """What the loop's exception handler saw: each entry is a bug in a proxy, never an expected network error."""
        return list(self._errors)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name}: the loop thread was already started")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._record_error)
        started = threading.Event()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop, started), name=self._name, daemon=True)
        self._thread.start()
        if not started.wait(CALL_TIMEOUT):
            raise RuntimeError(f"{self._name}: the loop thread did not start within {CALL_TIMEOUT:.0f}s")

    def call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = CALL_TIMEOUT) -> _T:
        """Run ``coroutine`` on the loop thread and return its result; safe from any other thread."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError(
                f"{self._name}: a control call from the proxy's own loop thread would deadlock"
            )
        if not self.running:
            coroutine.close()
            raise RuntimeError(f"{self._name}: the loop thread is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the coroutine's own TimeoutError (the same class from Python 3.11 on)
            future.cancel()
            raise TimeoutError(
                f"{self._name}: the loop thread did not answer within {timeout:.1f}s"
            ) from None

    async def call_async(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop thread while the caller's own loop keeps running; cancelling cancels it."""
        if not self.running:
            coroutine.close()
            raise RuntimeError(f"{self._name}: the loop thread is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def stop(self) -> None:
        """Stop the loop, let the thread cancel what is left and close the loop, and wait for the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{self._name}: the loop thread did not stop within {CALL_TIMEOUT:.0f}s")
        self._loop = None

    def _run(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            self._finish(loop)

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        # Whatever the owner did not shut down itself is cancelled and awaited here, so that no task or
        # transport outlives its loop (pytest turns the resulting ResourceWarnings into failures).
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()

    def _record_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "unknown error"))
        exception = context.get("exception")
        if exception is not None:
            message = f"{message}: {exception!r}"
        self._errors.append(message)
