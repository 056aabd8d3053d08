"""A fleet upgraded one process at a time: channels_redis 4 and our layer on the same servers and prefix.

Each direction is tested on one server and on three shards. On three shards one direction cannot work, by a
bug of the peer: channels_redis sends a process channel (``name!suffix``) to the shard of the full name but
receives it from the shard of the ``name!`` part, so what it sends there usually lands where nobody reads. Our
layer places process channels by the ``name!`` part on both sides, as the peer's receive and group_send do. So
with shards, process channels are tested from us to the peer only; from the peer to us they are tested through
groups (the peer's group_send places them correctly) and normal channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ChannelFull, ValkeyChannelLayer

if TYPE_CHECKING:
    from core.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single", "shards"], indirect=True)

Receive = Callable[..., Awaitable[dict[str, Any]]]


async def test_normal_channel_peer_to_ours(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    await peer.send("fleet.normal", {"type": "from.peer", "text": "héllo", "data": b"\x00\x01"})
    assert await receive(layer, "fleet.normal") == {"type": "from.peer", "text": "héllo", "data": b"\x00\x01"}


async def test_normal_channel_ours_to_peer(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive, topology: Topology
) -> None:
    # Both sides go round-robin over the shards; the peer's receive reads one shard per call, so send one
    # message per shard and let the peer take them in any order.
    count = topology.shard_count
    for index in range(count):
        await layer.send("fleet.normal", {"type": "from.ours", "n": index})
    received = [await receive(peer, "fleet.normal") for _ in range(count)]
    assert sorted(message["n"] for message in received) == list(range(count))
    assert {message["type"] for message in received} == {"from.ours"}


async def test_process_channel_ours_to_peer(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    channel = await peer.new_channel()
    for index in range(5):
        await layer.send(channel, {"type": "from.ours", "n": index})
    assert [(await receive(peer, channel))["n"] for _ in range(5)] == list(range(5))


async def test_process_channel_peer_to_ours(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive, topology: Topology
) -> None:
    if topology.name == "shards":
        # The peer's send goes to the shard of the full name (see the module docstring): only
        # the groups test covers this direction there.
        channel = await layer.new_channel()
        await peer.group_add("fleet-direct", channel)
        await peer.group_send("fleet-direct", {"type": "from.peer", "n": 0})
        assert await receive(layer, channel) == {"type": "from.peer", "n": 0}
        return
    channel = await layer.new_channel()
    for index in range(5):
        await peer.send(channel, {"type": "from.peer", "n": index})
    assert [(await receive(layer, channel))["n"] for _ in range(5)] == list(range(5))


async def test_capacity_is_shared_with_the_peer(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str
) -> None:
    # One queue per shard on the server: what one side queued counts against the other's capacity.
    layer = make_layer(capacity=3)
    peer = RedisChannelLayer(hosts=topology.peer_hosts, prefix=layer_prefix, capacity=3)
    try:
        for index in range(3 * topology.shard_count):
            await peer.send("fleet.full-by-peer", {"type": "fill", "n": index})
        with pytest.raises(ChannelFull):
            await layer.send("fleet.full-by-peer", {"type": "one too many"})
        for index in range(3 * topology.shard_count):
            await layer.send("fleet.full-by-ours", {"type": "fill", "n": index})
        with pytest.raises(ChannelFull):
            await peer.send("fleet.full-by-ours", {"type": "one too many"})
    finally:
        await peer.close_pools()


async def test_groups_across_the_fleet(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    ours_channel = await layer.new_channel()
    peer_channel = await peer.new_channel()
    await layer.group_add("fleet-group", ours_channel)
    await peer.group_add("fleet-group", peer_channel)
    assert sorted(await layer.group_channels("fleet-group")) == sorted([ours_channel, peer_channel])

    await peer.group_send("fleet-group", {"type": "group", "from": "peer"})
    assert await receive(layer, ours_channel) == {"type": "group", "from": "peer"}
    assert await receive(peer, peer_channel) == {"type": "group", "from": "peer"}

    await layer.group_send("fleet-group", {"type": "group", "from": "ours"})
    assert await receive(layer, ours_channel) == {"type": "group", "from": "ours"}
    assert await receive(peer, peer_channel) == {"type": "group", "from": "ours"}

    # Either side can discard what the other added.
    await peer.group_discard("fleet-group", ours_channel)
    assert await layer.group_channels("fleet-group") == [peer_channel]
    await layer.group_discard("fleet-group", peer_channel)
    assert await layer.group_channels("fleet-group") == []


async def test_peer_group_send_to_a_normal_channel(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    # Received by our layer: the peer's receive of a normal channel reads one shard per call, and its
    # group_send puts the message on the shard of the channel's name. The peer writes its routing key
    # (__asgi_channel__) into the message of every member, normal channels included; the consumer must not see it.
    await layer.group_add("fleet-normal-group", "fleet.group-normal")
    await peer.group_send("fleet-normal-group", {"type": "group", "from": "peer"})
    assert await receive(layer, "fleet.group-normal") == {"type": "group", "from": "peer"}
    await layer.group_send("fleet-normal-group", {"type": "group", "from": "ours"})
    assert await receive(layer, "fleet.group-normal") == {"type": "group", "from": "ours"}


async def test_group_send_to_several_peer_process_channels(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    channels = [await peer.new_channel() for _ in range(3)]
    for channel in channels:
        await peer.group_add("fleet-fanout", channel)
    await layer.group_send("fleet-fanout", {"type": "fanout"})
    for channel in channels:
        assert await receive(peer, channel) == {"type": "fanout"}
    # A marker sent next is what each channel receives next: no channel got a second copy.
    for channel in channels:
        await layer.send(channel, {"type": "marker"})
    for channel in channels:
        assert await receive(peer, channel) == {"type": "marker"}


async def test_group_send_to_several_of_our_process_channels_from_the_peer(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer, receive: Receive
) -> None:
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("fleet-fanout-back", channel)
    await peer.group_send("fleet-fanout-back", {"type": "fanout"})
    assert (
        await asyncio.gather(*(receive(layer, channel) for channel in channels)) == [{"type": "fanout"}] * 3
    )
    for channel in channels:
        await layer.send(channel, {"type": "marker"})
    for channel in channels:
        assert await receive(layer, channel) == {"type": "marker"}
