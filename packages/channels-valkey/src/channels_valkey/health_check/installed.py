"""Which django-health-check is installed: its 4.x API, or the plugin registry of 3.x."""

from __future__ import annotations

import importlib.util

from django.core.exceptions import ImproperlyConfigured

__all__ = ["health_check_major"]


def health_check_major() -> int:
    """4 when django-health-check has its 4.x API (``health_check.base``), 3 for the registry of 3.x."""
    try:
        has_base = importlib.util.find_spec("health_check.base") is not None
    except ModuleNotFoundError as error:  # no health_check package at all
        raise ImproperlyConfigured(
            "channels_valkey.health_check needs django-health-check: pip install 'channels-valkey[health]'"
        ) from error
    return 4 if has_base else 3
