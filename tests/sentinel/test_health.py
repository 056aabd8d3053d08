"""``await layer.health(timeout)``: every primary asked at once, one answer within the timeout, never an exception.

Both layers expose the same check (``channels_valkey.sentinel.check_health`` on their connections); each case runs
through one layer or the other, on the topology it is about.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import HealthReport

from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess, free_port
from servers.topologies import SENTINEL_PASSWORD, SERVER_PASSWORD, SentinelGroup, Shards, add_acl_user

LAYERS = [ValkeyChannelLayer, ValkeyPubSubChannelLayer]


async def _health(
    layer_class: type[Any], hosts: list[Any], timeout: float = 1.0
) -> tuple[HealthReport, float]:
    layer = layer_class(hosts=hosts)
    started = time.monotonic()
    try:
        report = await layer.health(timeout=timeout)
        return report, time.monotonic() - started
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_a_healthy_server_with_its_password_masked(
    layer_class: type[Any], secured_valkey: ValkeyProcess
) -> None:
    report, _ = await _health(layer_class, [secured_valkey.url()])
    assert report.ok
    [server] = report.servers
    assert (server.reachable, server.role, server.error) == (True, "master", None)
    assert server.round_trip is not None
    assert server.round_trip > 0
    assert str(secured_valkey.port) in server.address
    shown = json.dumps(report.as_dict())
    assert SERVER_PASSWORD not in shown
    assert json.loads(shown)["servers"][0]["ok"] is True


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_a_server_that_is_down_is_reported_within_the_timeout(layer_class: type[Any]) -> None:
    port = free_port()  # nothing listens there
    report, took = await _health(layer_class, [f"valkey://:{SERVER_PASSWORD}@127.0.0.1:{port}"], timeout=1.0)
    assert not report.ok
    [server] = report.servers
    assert not server.reachable
    assert server.error
    assert SERVER_PASSWORD not in json.dumps(report.as_dict())
    assert took < 1.5


async def test_a_server_that_does_not_answer_is_reported_at_the_timeout(
    server_factory: Callable[..., ValkeyProcess],
) -> None:
    server = server_factory()
    layer = ValkeyChannelLayer(hosts=[server.url()])
    try:
        assert (await layer.health()).ok  # connected first: the pause then meets an open connection
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            report = await layer.health(timeout=0.5)
            took = time.monotonic() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert not report.ok
        assert "no answer within the timeout" in (report.servers[0].error or "")
        assert took < 1.0
    finally:
        await layer.close_pools()


async def test_every_shard_is_checked(valkey_shards: Shards) -> None:
    report, _ = await _health(ValkeyPubSubChannelLayer, valkey_shards.urls())
    assert report.ok
    assert len(report.servers) == len(valkey_shards)
    assert {server.address for server in report.servers} == {
        f"shard {index} (valkey://127.0.0.1:{shard.port}/0)" for index, shard in enumerate(valkey_shards)
    }


async def test_a_replica_given_as_a_host_is_not_healthy(sentinel_group: SentinelGroup) -> None:
    report, _ = await _health(ValkeyChannelLayer, [sentinel_group.replica.url()])
    assert not report.ok
    [server] = report.servers
    assert server.reachable
    assert server.role == "slave"
    assert "not as a primary" in (server.error or "")


async def test_the_primary_behind_sentinel(sentinel_group: SentinelGroup) -> None:
    entry = {
        "sentinels": sentinel_group.sentinel_addresses,
        "services": [],
        "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
    }
    report, _ = await _health(ValkeyPubSubChannelLayer, [entry])
    assert report.ok
    assert [server.role for server in report.servers] == ["master"]


async def test_every_primary_of_a_cluster(valkey_cluster: ValkeyCluster) -> None:
    report, _ = await _health(ValkeyChannelLayer, [{"cluster": [valkey_cluster.url()]}])
    assert report.ok
    assert len(report.servers) == len(valkey_cluster.primaries())
    assert {server.role for server in report.servers} == {"master"}


async def test_a_user_without_ping_or_role_is_still_reported_healthy(
    secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    # Given only what channels-valkey 0.3 documented for the Pub/Sub layer: the refusals are answers.
    user = f"{key_prefix}limited"
    add_acl_user(secured_valkey, user, "pw", ["&*", "+publish", "+subscribe", "+unsubscribe"])
    host, port = secured_valkey.address
    report, _ = await _health(ValkeyPubSubChannelLayer, [f"valkey://{user}:pw@{host}:{port}"])
    assert report.ok
    [server] = report.servers
    assert server.reachable
    assert server.role is None
