"""What the health check does, whichever major version of django-health-check runs it.

Both versions' checks share these steps: find the channel layer an alias names (refusing a layer that is not one of
ours, since only ours have ``health()``), read the timeout, and turn an unhealthy report into the one line an
operator reads on the status page: every failing server by its masked address, with its error.
"""

from __future__ import annotations

import datetime
import math

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import HealthReport

__all__ = ["DEFAULT_TIMEOUT", "channel_layer", "failure", "timeout_of"]

#: How long a check waits for the layer's servers when it is not told: short, as a load balancer's probe wants.
DEFAULT_TIMEOUT = datetime.timedelta(seconds=1)

#: The layers that answer ``health()``.
OurLayer = ValkeyChannelLayer | ValkeyPubSubChannelLayer


def channel_layer(alias: object) -> OurLayer:
    """The layer ``CHANNEL_LAYERS[alias]`` makes, or ImproperlyConfigured saying why it cannot be checked."""
    if not isinstance(alias, str) or not alias:
        raise ImproperlyConfigured(
            f"channels_valkey.health_check: a channel layer alias must be a non-empty string, not {alias!r}"
        )
    layer = get_channel_layer(alias)
    if layer is None:
        known = ", ".join(repr(name) for name in getattr(settings, "CHANNEL_LAYERS", {})) or "none"
        raise ImproperlyConfigured(
            f"channels_valkey.health_check: CHANNEL_LAYERS has no alias {alias!r} (it has: {known})"
        )
    if not isinstance(layer, ValkeyChannelLayer | ValkeyPubSubChannelLayer):
        backend = settings.CHANNEL_LAYERS[alias].get("BACKEND")
        raise ImproperlyConfigured(
            f"channels_valkey.health_check: CHANNEL_LAYERS[{alias!r}] uses the backend {backend!r}, which is not "
            "a channels-valkey layer; the check knows channels_valkey.core.ValkeyChannelLayer and "
            "channels_valkey.pubsub.ValkeyPubSubChannelLayer (and their subclasses)"
        )
    return layer


def timeout_of(value: object) -> datetime.timedelta:
    """``value`` (seconds, or a timedelta) as a timedelta, or ImproperlyConfigured naming it."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ImproperlyConfigured(
            f"channels_valkey.health_check: timeout must be a number of seconds or a timedelta, not {value!r}"
        )
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ImproperlyConfigured(
            f"channels_valkey.health_check: timeout must be more than 0 seconds and finite, not {value!r}"
        )
    return datetime.timedelta(seconds=seconds)


def failure(alias: str, report: HealthReport) -> str | None:
    """What is wrong with the layer, each failing server by its masked address and error; None when healthy."""
    if report.ok:
        return None
    failing = [server for server in report.servers if not server.ok]
    details = "; ".join(f"{server.address}: {server.error or 'unhealthy'}" for server in failing)
    return f"channel layer {alias!r}: {len(failing)} of {len(report.servers)} servers unhealthy: {details}"
