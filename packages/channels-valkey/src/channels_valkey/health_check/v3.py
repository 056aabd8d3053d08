"""The check on django-health-check 3: a backend the app registers, run by the view in a thread of its own.

3.21 renamed the base class ``BaseHealthCheckBackend`` to ``HealthCheck`` and names checks by ``repr()`` instead
of ``identifier()`` (warning when a check still has one), so the check takes whichever base is there and gives its
name the way that version reads it. Both versions call the synchronous ``check_status()``; it runs the layer's
``health()`` on an event loop of its own, whose connections close with it.
"""

from __future__ import annotations

import datetime

from asgiref.sync import async_to_sync

from channels_valkey.health_check.probe import DEFAULT_TIMEOUT, channel_layer, failure, timeout_of
from health_check import backends
from health_check.exceptions import ServiceUnavailable

__all__ = ["ChannelLayer"]

#: Whether this django-health-check names checks by ``repr()`` (3.21 on) rather than by ``identifier()``.
NAMED_BY_REPR = hasattr(backends, "HealthCheck")
_Base = backends.HealthCheck if NAMED_BY_REPR else backends.BaseHealthCheckBackend


class ChannelLayer(_Base):  # type: ignore[misc,valid-type]  # django-health-check ships no type information
    """The channel layer ``CHANNEL_LAYERS[alias]``: unavailable unless every one of its servers is healthy.

    The page names it ``ChannelLayer(alias='default')``; a failure lists each failing server by its address
    (passwords masked) with its error, so an operator sees which server is down.
    """

    def __init__(self, alias: str = "default", timeout: float | datetime.timedelta = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.alias = alias
        self.timeout = timeout_of(timeout)
        self._layer = channel_layer(alias)

    def check_status(self) -> None:
        """Ask every server of the layer at once; raise ServiceUnavailable naming the ones that failed."""
        report = async_to_sync(self._layer.health)(timeout=self.timeout.total_seconds())
        problem = failure(self.alias, report)
        if problem is not None:
            raise ServiceUnavailable(problem)

    def __repr__(self) -> str:
        return f"ChannelLayer(alias={self.alias!r})"

    if not NAMED_BY_REPR:

        def identifier(self) -> str:
            """The name the page shows (django-health-check before 3.21)."""
            return repr(self)
