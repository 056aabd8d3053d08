"""A Django site for the django-health-check plugin's tests: settings made once, URLs and layers per test.

Django is set up only when a test here runs (the rest of the suite never needs it), with django-health-check's app
and ours installed as a project would install them. Each test then gets a test client whose ``CHANNEL_LAYERS`` and
URLs are its own (``override_settings``; Channels forgets its layers when ``CHANNEL_LAYERS`` changes).

The status page is wired as django-health-check's major version wants it: on 3.x through its URLs, which show the
checks apps registered in its registry when Django started (so a test fails if our app did not register); on 4.x
through a ``HealthCheckView`` listing our check. This folder has no ``__init__.py`` on purpose: with ``tests`` on
``sys.path`` a package named ``health_check`` here would shadow django-health-check's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest


def _set_up_django() -> None:
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="channels-valkey health check tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["health_check", "channels_valkey.health_check"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        USE_TZ=True,
        CHANNEL_LAYERS={},
    )
    import django

    django.setup()


@pytest.fixture(scope="session")
def django_site() -> None:
    """Django configured and set up, once per session."""
    _set_up_django()


@pytest.fixture(scope="session")
def health_check_major(django_site: None) -> int:
    from channels_valkey.health_check.installed import health_check_major

    return health_check_major()


def _status_page_urls(major: int) -> type:
    """The URL patterns a project writes: ``/health/`` shows the default layer's check."""
    from django.urls import include, path

    if major >= 4:
        from health_check.views import HealthCheckView

        patterns = [
            path("health/", HealthCheckView.as_view(checks=["channels_valkey.health_check.ChannelLayer"]))
        ]
    else:
        with warnings.catch_warnings():  # 3.21 on warn that these URLs are deprecated in favour of 4.x's view
            warnings.simplefilter("ignore", DeprecationWarning)
            patterns = [path("health/", include("health_check.urls"))]

    class Urls:
        urlpatterns = patterns

    return Urls


@pytest.fixture
def status_page(health_check_major: int) -> Iterator[Callable[..., Any]]:
    """``status_page(CHANNEL_LAYERS)``: a test client for a site with those layers and the status page."""
    from django.test import Client
    from django.test.utils import override_settings

    urls = _status_page_urls(health_check_major)
    with ExitStack() as stack:

        def open_site(channel_layers: dict[str, Any]) -> Client:
            stack.enter_context(override_settings(CHANNEL_LAYERS=channel_layers, ROOT_URLCONF=urls))
            return Client()

        yield open_site
