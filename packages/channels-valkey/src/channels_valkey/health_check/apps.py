"""The Django app ``channels_valkey.health_check``: adding it to ``INSTALLED_APPS`` plugs the channel layer check
into django-health-check."""

from __future__ import annotations

from django.apps import AppConfig

from channels_valkey.health_check.installed import health_check_major

__all__ = ["ChannelLayerHealthCheckConfig"]


class ChannelLayerHealthCheckConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """Registers the checks of ``CHANNELS_VALKEY_HEALTH_CHECK`` on django-health-check 3 (4 has no registry)."""

    name = "channels_valkey.health_check"
    # The default label, "health_check", is django-health-check's own app.
    label = "channels_valkey_health_check"
    verbose_name = "channels-valkey health check"

    def ready(self) -> None:
        """Register the configured checks with django-health-check 3; on 4 they are listed in the view."""
        if health_check_major() == 3:
            from channels_valkey.health_check.registration import register_checks

            register_checks()
