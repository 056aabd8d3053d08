"""The ``CHANNELS_VALKEY_HEALTH_CHECK`` setting, and the checks the app registers from it on django-health-check 3.

django-health-check 3 finds its checks in a registry that apps fill when Django starts; 4 has no registry (a
``HealthCheckView`` lists its checks), so there the setting is not read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from channels_valkey.health_check.probe import DEFAULT_TIMEOUT, timeout_of

__all__ = ["SETTING", "register_checks"]

#: The setting's name: ``{"ALIASES": ["default", ...], "TIMEOUT": seconds}``, both optional.
SETTING = "CHANNELS_VALKEY_HEALTH_CHECK"
_KEYS = ("ALIASES", "TIMEOUT")


def configured_checks() -> list[dict[str, Any]]:
    """The options of each check the setting asks for (one per alias), checked, with errors naming the value."""
    config = getattr(settings, SETTING, {})
    if not isinstance(config, dict):
        raise ImproperlyConfigured(f"{SETTING} must be a dict with the keys {_KEYS}, not {config!r}")
    unknown = sorted(set(config) - set(_KEYS), key=str)
    if unknown:
        raise ImproperlyConfigured(f"{SETTING} has unknown keys {unknown}; it knows {list(_KEYS)}")
    aliases = config.get("ALIASES", ["default"])
    if isinstance(aliases, str) or not isinstance(aliases, Sequence) or not aliases:
        raise ImproperlyConfigured(
            f"{SETTING}['ALIASES'] must be a non-empty list of aliases, not {aliases!r}"
        )
    for alias in aliases:
        if not isinstance(alias, str) or not alias:
            raise ImproperlyConfigured(
                f"{SETTING}['ALIASES'] must hold CHANNEL_LAYERS aliases (strings), not {alias!r}"
            )
    if len(set(aliases)) != len(aliases):
        raise ImproperlyConfigured(f"{SETTING}['ALIASES'] names an alias twice: {list(aliases)!r}")
    timeout = timeout_of(config.get("TIMEOUT", DEFAULT_TIMEOUT))
    return [{"alias": alias, "timeout": timeout} for alias in aliases]


def register_checks() -> None:
    """Register one check per configured alias with django-health-check 3's plugin registry."""
    from channels_valkey.health_check.v3 import ChannelLayer
    from health_check.plugins import plugin_dir

    for options in configured_checks():
        plugin_dir.register(ChannelLayer, **options)
