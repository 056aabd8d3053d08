"""The django-health-check plugin on a real status page: Django's test client against real Valkey servers.

The same tests run on django-health-check 4 (``hatch test``) and 3 (the Django 4.2 cells of
``hatch run matrix:conformance``); the conftest wires the page the way each version wants it.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Callable
from typing import Any

import pytest

from servers.process import ValkeyProcess, free_port
from servers.topologies import SERVER_PASSWORD

# django-health-check 3.21 on warns whenever its registry's view is made; that view is what 3.x projects use.
pytestmark = pytest.mark.filterwarnings("ignore:MainView is deprecated:DeprecationWarning")

CHECK_NAME = "ChannelLayer(alias='default')"
#: What the page says of a passing check: django-health-check 4 and 3.21 on say "OK", before 3.21 "working".
PASSING = ("OK", "working")
LAYERS = {
    "core": "channels_valkey.core.ValkeyChannelLayer",
    "pubsub": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
}


def layer_settings(backend: str, hosts: list[str]) -> dict[str, Any]:
    return {"default": {"BACKEND": backend, "CONFIG": {"hosts": hosts}}}


def down_server_url() -> tuple[str, int]:
    """A URL with a password for a loopback port where nothing listens."""
    port = free_port()
    return f"valkey://:{SERVER_PASSWORD}@127.0.0.1:{port}/0", port


@pytest.mark.parametrize("backend", LAYERS.values(), ids=LAYERS.keys())
def test_a_healthy_layer_is_listed_as_working(
    backend: str, status_page: Callable[..., Any], secured_valkey: ValkeyProcess
) -> None:
    client = status_page(layer_settings(backend, [secured_valkey.url()]))

    as_json = client.get("/health/", {"format": "json"})
    as_html = client.get("/health/")

    assert as_json.status_code == 200, as_json.content
    statuses = json.loads(as_json.content)
    assert CHECK_NAME in statuses, statuses
    assert statuses[CHECK_NAME] in PASSING
    assert as_html.status_code == 200
    page = html.unescape(as_html.content.decode())
    assert CHECK_NAME in page
    assert SERVER_PASSWORD not in page + as_json.content.decode()


@pytest.mark.parametrize("backend", LAYERS.values(), ids=LAYERS.keys())
def test_a_server_that_is_down_fails_the_check_naming_it_with_its_password_masked(
    backend: str, status_page: Callable[..., Any], secured_valkey: ValkeyProcess
) -> None:
    down, port = down_server_url()
    client = status_page(layer_settings(backend, [secured_valkey.url(), down]))

    as_json = client.get("/health/", {"format": "json"})
    as_html = client.get("/health/")

    assert as_json.status_code == 500, as_json.content
    status = json.loads(as_json.content)[CHECK_NAME]
    assert status.lower().startswith("unavailable: channel layer 'default': 1 of 2 servers unhealthy: ")
    assert f"(valkey://:***@127.0.0.1:{port}/0): " in status  # the failing shard, masked, then its error
    assert "Error" in status.split(f"127.0.0.1:{port}/0): ", 1)[1]
    assert str(secured_valkey.port) not in status  # the healthy shard is not blamed
    assert as_html.status_code == 500
    page = html.unescape(as_html.content.decode())
    assert f"(valkey://:***@127.0.0.1:{port}/0): " in page
    assert SERVER_PASSWORD not in page + as_json.content.decode()


def test_a_stopped_server_fails_the_check(
    status_page: Callable[..., Any], server_factory: Callable[..., ValkeyProcess]
) -> None:
    server = server_factory()
    client = status_page(layer_settings(LAYERS["core"], [server.url()]))
    assert client.get("/health/", {"format": "json"}).status_code == 200

    server.stop()
    response = client.get("/health/", {"format": "json"})

    assert response.status_code == 500
    assert f"127.0.0.1:{server.port}/0): " in json.loads(response.content)[CHECK_NAME]


def test_a_layer_that_is_not_ours_is_refused_naming_its_backend(status_page: Callable[..., Any]) -> None:
    from django.core.exceptions import ImproperlyConfigured

    client = status_page({"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})

    with pytest.raises(ImproperlyConfigured, match=r"'channels\.layers\.InMemoryChannelLayer'"):
        client.get("/health/", {"format": "json"})


def test_another_alias_and_timeout(
    status_page: Callable[..., Any], valkey_url: str, health_check_major: int
) -> None:
    from channels_valkey.health_check import ChannelLayer

    down, port = down_server_url()
    status_page(
        {
            "default": {"BACKEND": LAYERS["core"], "CONFIG": {"hosts": [valkey_url]}},
            "live": {"BACKEND": LAYERS["pubsub"], "CONFIG": {"hosts": [down]}},
        }
    )

    healthy = run_check(ChannelLayer(alias="default", timeout=0.5), health_check_major)
    failing = ChannelLayer(alias="live", timeout=datetime.timedelta(seconds=2))
    error = run_check(failing, health_check_major)

    assert healthy is None
    assert repr(failing) == "ChannelLayer(alias='live')"
    assert failing.timeout == datetime.timedelta(seconds=2)
    assert error is not None
    assert (
        f"channel layer 'live': 1 of 1 servers unhealthy: shard 0 (valkey://:***@127.0.0.1:{port}/0): "
        in error
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alias": "nope"}, r"CHANNEL_LAYERS has no alias 'nope' \(it has: 'default'\)"),
        ({"alias": ""}, r"alias must be a non-empty string, not ''"),
        ({"timeout": 0}, r"timeout must be more than 0 seconds and finite, not 0"),
        ({"timeout": datetime.timedelta(0)}, r"more than 0 seconds and finite, not datetime\.timedelta\(0\)"),
        ({"timeout": float("inf")}, r"more than 0 seconds and finite, not inf"),
        ({"timeout": "1"}, r"timeout must be a number of seconds or a timedelta, not '1'"),
        ({"timeout": True}, r"timeout must be a number of seconds or a timedelta, not True"),
    ],
)
def test_bad_options_are_refused_naming_the_value(
    options: dict[str, Any], message: str, status_page: Callable[..., Any], valkey_url: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from channels_valkey.health_check import ChannelLayer

    status_page(layer_settings(LAYERS["core"], [valkey_url]))
    with pytest.raises(ImproperlyConfigured, match=message):
        ChannelLayer(**options)


def run_check(check: Any, major: int) -> str | None:
    """Run one check the way its django-health-check version does; its error text, or None when it passed."""
    if major >= 4:
        from asgiref.sync import async_to_sync

        result = async_to_sync(check.get_result)()
        return None if result.error is None else str(result.error)
    check.run_check()
    return check.pretty_status() if check.errors else None
