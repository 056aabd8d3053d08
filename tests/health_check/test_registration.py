"""The app and its setting: what ``CHANNELS_VALKEY_HEALTH_CHECK`` asks for, and what the app registers on 3.x."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

SECOND = datetime.timedelta(seconds=1)


def test_the_app_is_installed_under_its_own_label(django_site: None) -> None:
    from django.apps import apps

    config = apps.get_app_config("channels_valkey_health_check")
    assert config.name == "channels_valkey.health_check"
    assert apps.get_app_config("health_check").name == "health_check"  # django-health-check's, not shadowed


def test_on_3x_the_app_registered_the_default_layer(health_check_major: int) -> None:
    if health_check_major >= 4:
        pytest.skip(
            "django-health-check 4 has no registry "
            "(the Django 4.2 cells of hatch run matrix:conformance run this on 3.x)"
        )
    from health_check.plugins import plugin_dir

    from channels_valkey.health_check import ChannelLayer

    ours = [options for plugin, options in plugin_dir._registry if plugin is ChannelLayer]
    assert ours == [{"alias": "default", "timeout": SECOND}]


@pytest.mark.parametrize(
    ("setting", "checks"),
    [
        ({}, [{"alias": "default", "timeout": SECOND}]),
        (
            {"ALIASES": ["default", "live"], "TIMEOUT": 2.5},
            [
                {"alias": "default", "timeout": datetime.timedelta(seconds=2.5)},
                {"alias": "live", "timeout": datetime.timedelta(seconds=2.5)},
            ],
        ),
        ({"ALIASES": ("live",)}, [{"alias": "live", "timeout": SECOND}]),
    ],
)
def test_the_setting_names_the_checks(django_site: None, setting: dict[str, Any], checks: list[Any]) -> None:
    from django.test.utils import override_settings

    from channels_valkey.health_check.registration import configured_checks

    with override_settings(CHANNELS_VALKEY_HEALTH_CHECK=setting):
        assert configured_checks() == checks


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["default"], r"must be a dict with the keys \('ALIASES', 'TIMEOUT'\), not \['default'\]"),
        ({"ALIAS": ["default"]}, r"unknown keys \['ALIAS'\]"),
        ({"ALIASES": "default"}, r"\['ALIASES'\] must be a non-empty list of aliases, not 'default'"),
        ({"ALIASES": []}, r"\['ALIASES'\] must be a non-empty list of aliases, not \[\]"),
        ({"ALIASES": ["default", 3]}, r"\['ALIASES'\] must hold CHANNEL_LAYERS aliases \(strings\), not 3"),
        ({"ALIASES": ["a", "a"]}, r"names an alias twice: \['a', 'a'\]"),
        ({"TIMEOUT": -1}, r"timeout must be more than 0 seconds and finite, not -1"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_value(django_site: None, setting: Any, message: str) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings

    from channels_valkey.health_check.registration import configured_checks

    with (
        override_settings(CHANNELS_VALKEY_HEALTH_CHECK=setting),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        configured_checks()
