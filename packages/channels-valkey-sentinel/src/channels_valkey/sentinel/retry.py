"""Retries: the one way every loop of the layers waits before trying a failed connection or command again.

Commands, queue readers, Pub/Sub listeners, the cluster subscriber and the Sentinel watcher all retry the same way:
the policy's exponential back-off with jitter (capped at ``backoff_cap``), counted from the last success, so a
loop that recovered starts again with short waits. A bounded loop gives up after ``retry_attempts`` retries or
``retry_deadline`` seconds of failing; an unbounded one (a listener that must come back whenever the server does)
never gives up but never waits longer than the cap. Each wait is logged once, with what failed and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from channels_valkey.sentinel.policy import ResiliencePolicy

#: Failures past this count add nothing to a capped back-off; counting stops there so the arithmetic stays small.
_MAX_STEP = 30


class Retries:
    """The retry state of one loop or call: failures since the last success, and how long to wait next.

    ``what`` names the loop in log lines (``"receiving from asgi.chat"``). ``bounded`` loops stop retrying when
    the policy's attempts or deadline are spent; unbounded ones retry for as long as they run.
    """

    __slots__ = ("_backoff", "_failing_since", "bounded", "failures", "logger", "on_retry", "policy", "what")

    def __init__(
        self,
        policy: ResiliencePolicy,
        what: str,
        *,
        logger: logging.Logger,
        bounded: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        #: Told of every retry (a shard's reconnection count, see ``ShardCounts``).
        self.on_retry = on_retry
        self.what = what
        self.logger = logger
        self.bounded = bounded
        self.failures = 0
        self._failing_since = 0.0
        self._backoff = policy.backoff()

    def failed(self) -> bool:
        """Count a failure; whether another attempt is allowed (always, for an unbounded loop)."""
        now = time.monotonic()
        self.failures += 1
        self._failing_since = self._failing_since or now
        if not self.bounded:
            return True
        return (
            self.failures <= self.policy.retry_attempts
            and now - self._failing_since < self.policy.retry_deadline
        )

    def delay(self) -> float:
        """Seconds to wait before the next attempt, after ``failures`` failures in a row."""
        return float(self._backoff.compute(min(self.failures, _MAX_STEP)))

    async def wait(self, error: BaseException, *, level: int = logging.INFO) -> None:
        """Log the failure and sleep the back-off for it; call after :meth:`failed` allowed a retry."""
        delay = self.delay()
        self.logger.log(level, "%s failed (%s); retry %d in %.2fs", self.what, error, self.failures, delay)
        if self.on_retry is not None:
            self.on_retry()
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        """The last attempt worked: the next failure starts a fresh count and a short wait."""
        self.failures = 0
        self._failing_since = 0.0
