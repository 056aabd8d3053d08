"""The check on django-health-check 4: an async ``HealthCheck`` that a ``HealthCheckView`` lists in its ``checks``."""

from __future__ import annotations

import dataclasses
import datetime

from channels_valkey.health_check.probe import DEFAULT_TIMEOUT, OurLayer, channel_layer, failure, timeout_of
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

__all__ = ["ChannelLayer"]


@dataclasses.dataclass
class ChannelLayer(HealthCheck):  # type: ignore[misc]  # django-health-check ships no type information
    """The channel layer ``CHANNEL_LAYERS[alias]``: unavailable unless every one of its servers is healthy.

    The page names it ``ChannelLayer(alias='default')``; a failure lists each failing server by its address
    (passwords masked) with its error, so an operator sees which server is down.
    """

    alias: str = "default"
    #: Seconds (or a timedelta) the layer's servers have to answer; django-health-check's own limit is a second more.
    timeout: datetime.timedelta = dataclasses.field(default=DEFAULT_TIMEOUT, repr=False)
    _layer: OurLayer = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.timeout = timeout_of(self.timeout)
        self._layer = channel_layer(self.alias)

    async def run(self) -> None:
        """Ask every server of the layer at once; raise ServiceUnavailable naming the ones that failed."""
        report = await self._layer.health(timeout=self.timeout.total_seconds())
        problem = failure(self.alias, report)
        if problem is not None:
            raise ServiceUnavailable(problem)
