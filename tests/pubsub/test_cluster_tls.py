"""The Pub/Sub layer on a Valkey Cluster reached only through TLS: a TLS endpoint in front of each node, which the
node announces in its slot map. Sharded Pub/Sub publishes and subscriptions on every primary, a group across slots
and worker queues, every connection of the layer through a TLS endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.cluster import TLSCluster
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def hosts(tls_cluster: TLSCluster) -> list[Any]:
    """The layer's ``hosts`` (used by ``make_layer`` and ``layer`` of conftest.py): the cluster over TLS."""
    return [{"cluster": [tls_cluster.url()], "ssl_ca_certs": str(tls_cluster.ca_file)}]


def _shard_subscribers(node: ValkeyProcess, name: str) -> int:
    with node.client() as client:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", name)[1])


async def _process_channels_on_every_primary(
    layer: ValkeyPubSubChannelLayer, cluster: TLSCluster
) -> dict[str, ValkeyProcess]:
    """New process channels, with the primary serving each, until every primary serves one."""
    owners: dict[str, ValkeyProcess] = {}
    primaries = {node.name for node in cluster.primaries()}
    for _ in range(100):
        channel = await layer.new_channel()
        owners[channel] = cluster.primary_for(channel)
        if {node.name for node in owners.values()} == primaries:
            return owners
    pytest.fail(f"100 channels and still a primary of {sorted(primaries)} without one")


async def test_a_process_channel(
    layer: ValkeyPubSubChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    channel = await layer.new_channel()
    # new_channel returns once the node serving the name confirmed the subscription.
    assert _shard_subscribers(tls_cluster.primary_for(channel), channel) == 1
    await layer.send(channel, {"type": "private"})
    assert await receive(layer, channel) == {"type": "private"}


async def test_group_send_reaches_members_on_every_primary(
    layer: ValkeyPubSubChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    owners = await _process_channels_on_every_primary(layer, tls_cluster)
    # Groups whose Pub/Sub names live on every primary too; each member joins each group.
    groups: dict[str, ValkeyProcess] = {}
    for index in range(100):
        groups[f"room{index}"] = tls_cluster.primary_for(f"{layer.prefix}__group__room{index}")
        if {node.name for node in groups.values()} == {node.name for node in owners.values()}:
            break
    else:
        pytest.fail("100 groups and still a primary without one")
    for group in groups:
        for channel in owners:
            await layer.group_add(group, channel)
    for name, owner in [*owners.items(), *((f"{layer.prefix}__group__{g}", o) for g, o in groups.items())]:
        assert _shard_subscribers(owner, name) == 1, f"{name} is not subscribed on {owner.name}"
    for group in groups:
        await layer.group_send(group, {"type": "announce", "group": group})
    for channel in owners:
        got = [await receive(layer, channel) for _ in groups]
        assert sorted(message["group"] for message in got) == sorted(groups)
    for channel in owners:
        await layer.send(channel, {"type": "direct", "to": channel})
    for channel in owners:
        assert await receive(layer, channel) == {"type": "direct", "to": channel}
    # A subscriber connection per node and the publishing connections: all through the TLS endpoints.
    await asyncio.to_thread(tls_cluster.wait_only_through_proxies)


async def test_worker_channels_queue_on_every_primary(
    layer: ValkeyPubSubChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    owners: dict[str, ValkeyProcess] = {}
    primaries = {node.name for node in tls_cluster.primaries()}
    for index in range(100):
        channel = f"jobs.tls{index}"
        owners[channel] = tls_cluster.primary_for(layer.queue_key(channel))
        if {node.name for node in owners.values()} == primaries:
            break
    assert {node.name for node in owners.values()} == primaries, (
        "100 channels and still a primary without one"
    )
    for channel in owners:
        await layer.send(channel, {"type": "job", "for": channel})
    for channel, owner in owners.items():
        with owner.client() as client:
            assert client.zcard(layer.queue_key(channel)) == 1, f"{channel} is not queued on {owner.name}"
    for channel in owners:
        assert await receive(layer, channel) == {"type": "job", "for": channel}
    await asyncio.to_thread(tls_cluster.wait_only_through_proxies)
