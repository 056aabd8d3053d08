"""The core layer on a Valkey Cluster reached only through TLS: a TLS endpoint in front of each node, which the
node announces in its slot map. Channels and groups on every primary, a process channel, flush; every connection
of the layer goes through a TLS endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer

from servers.cluster import TLSCluster
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def hosts(tls_cluster: TLSCluster) -> list[Any]:
    """The layer's ``hosts`` (used by ``make_layer`` and ``layer`` of conftest.py): the cluster over TLS."""
    return [{"cluster": [tls_cluster.url()], "ssl_ca_certs": str(tls_cluster.ca_file)}]


def _channels_on_every_primary(layer: ValkeyChannelLayer, cluster: TLSCluster) -> dict[str, ValkeyProcess]:
    """Channel names, with the primary serving each one's queue, until every primary serves one."""
    owners: dict[str, ValkeyProcess] = {}
    primaries = {node.name for node in cluster.primaries()}
    for index in range(100):
        channel = f"tls.{index}"
        owners[channel] = cluster.primary_for(layer.queue_key(channel))
        if {node.name for node in owners.values()} == primaries:
            return owners
    pytest.fail(f"100 channels and still a primary of {sorted(primaries)} without one")


def _queued(node: ValkeyProcess, key: str) -> int:
    with node.client() as client:
        return int(client.zcard(key))


async def test_channels_on_every_primary_send_and_receive(
    layer: ValkeyChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    owners = _channels_on_every_primary(layer, tls_cluster)
    for channel in owners:
        await layer.send(channel, {"type": "hello", "to": channel})
    for channel, owner in owners.items():
        assert _queued(owner, layer.queue_key(channel)) == 1, f"{channel} is not queued on {owner.name}"
    for channel in owners:
        assert await receive(layer, channel) == {"type": "hello", "to": channel}
    await asyncio.to_thread(tls_cluster.wait_only_through_proxies)


async def test_a_process_channel(layer: ValkeyChannelLayer, receive: Receive) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "private"})
    assert await receive(layer, channel) == {"type": "private"}


async def test_group_send_reaches_members_on_every_primary(
    layer: ValkeyChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    owners = _channels_on_every_primary(layer, tls_cluster)
    members = [*owners, await layer.new_channel()]
    for channel in members:
        await layer.group_add("tls-room", channel)
    await layer.group_send("tls-room", {"type": "announce"})
    for channel in members:
        assert await receive(layer, channel) == {"type": "announce"}
    await layer.group_discard("tls-room", members[0])
    await layer.group_send("tls-room", {"type": "again"})
    for channel in members[1:]:
        assert await receive(layer, channel) == {"type": "again"}
    group_key = layer.group_key("tls-room")
    with tls_cluster.primary_for(group_key).client() as client:
        assert sorted(client.zrange(group_key, 0, -1)) == sorted(m.encode() for m in members[1:])
    await asyncio.to_thread(tls_cluster.wait_only_through_proxies)


async def test_flush_empties_every_primary(
    layer: ValkeyChannelLayer, tls_cluster: TLSCluster, receive: Receive
) -> None:
    owners = _channels_on_every_primary(layer, tls_cluster)
    for channel in owners:
        await layer.send(channel, {"type": "left"})
        await layer.group_add(f"group-{channel}", channel)
    process_channel = await layer.new_channel()
    await layer.send(process_channel, {"type": "left"})
    assert {node.name for node in tls_cluster.primaries() if _keys(node, layer.prefix)} == {
        node.name for node in owners.values()
    }

    await layer.flush()
    assert {node.name: _keys(node, layer.prefix) for node in tls_cluster.nodes} == {
        node.name: [] for node in tls_cluster.nodes
    }
    # The layer stays usable after a flush.
    await layer.send(process_channel, {"type": "after"})
    assert await receive(layer, process_channel) == {"type": "after"}


def _keys(node: ValkeyProcess, prefix: str) -> list[bytes]:
    with node.client() as client:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))
