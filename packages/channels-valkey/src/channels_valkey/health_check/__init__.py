"""A django-health-check plugin reporting channels-valkey's channel layers.

Add ``"channels_valkey.health_check"`` to ``INSTALLED_APPS`` (with django-health-check's own ``"health_check"``).
On django-health-check 3 the app registers a check of the default layer (or of the aliases in the
``CHANNELS_VALKEY_HEALTH_CHECK`` setting); on 4, list :class:`ChannelLayer` (``"channels_valkey.health_check.
ChannelLayer"``) in a ``HealthCheckView``'s ``checks``. Either way a check asks every server of its layer with the
layer's ``health()`` and fails naming each unhealthy server, password masked, with its error.
"""

from channels_valkey.health_check.installed import health_check_major

if health_check_major() >= 4:
    from channels_valkey.health_check.v4 import ChannelLayer
else:
    from channels_valkey.health_check.v3 import ChannelLayer  # type: ignore[assignment]

__all__ = ["ChannelLayer"]
