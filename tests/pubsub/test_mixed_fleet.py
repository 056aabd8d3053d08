"""A fleet upgraded one process at a time: channels_redis 4's Pub/Sub layer (the code of channels-valkey 0.3) and
ours on the same servers and prefix, both directions, for process channels and groups, on one server and on three
shards (both place a name on the same shard)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

if TYPE_CHECKING:
    from pubsub.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single", "shards"], indirect=True)

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]
MESSAGE = {"type": "fleet.message", "text": "héllo", "data": b"\x00\x01", "n": [1, {"a": 2}]}


@pytest.fixture
async def peer(topology: Topology, layer_prefix: str) -> AsyncIterator[RedisPubSubChannelLayer]:
    """channels_redis's Pub/Sub layer on the same servers and prefix as the ``layer`` fixture."""
    assert topology.peer_hosts is not None
    peer = RedisPubSubChannelLayer(hosts=topology.peer_hosts, prefix=layer_prefix)
    yield peer
    await peer.flush()


async def test_process_channel_ours_to_peer(
    layer: ValkeyPubSubChannelLayer,
    peer: RedisPubSubChannelLayer,
    receive: Receive,
    topology: Topology,
    eventually: Eventually,
) -> None:
    channel = await peer.new_channel()  # the peer's own name form: no "!"
    await layer.send(channel, MESSAGE)
    assert await receive(peer, channel) == MESSAGE
    bang = "peer.process!abc"  # and a name with "!"
    waiting = asyncio.create_task(receive(peer, bang))
    await eventually(lambda: topology.subscribers(bang) == 1, "the peer's subscription")
    await layer.send(bang, MESSAGE)
    assert await waiting == MESSAGE


async def test_process_channel_peer_to_ours(
    layer: ValkeyPubSubChannelLayer, peer: RedisPubSubChannelLayer, receive: Receive
) -> None:
    channel = await layer.new_channel()
    await peer.send(channel, MESSAGE)
    assert await receive(layer, channel) == MESSAGE


async def test_group_ours_to_peer(
    layer: ValkeyPubSubChannelLayer, peer: RedisPubSubChannelLayer, receive: Receive
) -> None:
    channel = await peer.new_channel()
    await peer.group_add("room", channel)
    await layer.group_send("room", MESSAGE)
    assert await receive(peer, channel) == MESSAGE


async def test_group_peer_to_ours(
    layer: ValkeyPubSubChannelLayer, peer: RedisPubSubChannelLayer, receive: Receive
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await peer.group_send("room", MESSAGE)
    assert await receive(layer, channel) == MESSAGE


async def test_worker_channel_published_by_the_peer_reaches_our_receiver(
    layer: ValkeyPubSubChannelLayer,
    peer: RedisPubSubChannelLayer,
    receive: Receive,
    topology: Topology,
    eventually: Eventually,
) -> None:
    waiting = asyncio.create_task(receive(layer, "fleet.jobs"))
    await eventually(lambda: topology.subscribers("fleet.jobs") == 1, "our receiver's subscription")
    await peer.send("fleet.jobs", MESSAGE)
    assert await waiting == MESSAGE


async def test_worker_channel_in_pubsub_mode_reaches_the_peer(
    make_layer: Callable[..., ValkeyPubSubChannelLayer],
    peer: RedisPubSubChannelLayer,
    receive: Receive,
    topology: Topology,
    eventually: Eventually,
) -> None:
    layer = make_layer(worker_channels="pubsub")
    waiting = asyncio.create_task(receive(peer, "fleet.jobs"))
    await eventually(lambda: topology.subscribers("fleet.jobs") == 1, "the peer's subscription")
    await layer.send("fleet.jobs", MESSAGE)
    assert await waiting == MESSAGE


async def test_same_payload_bytes_as_the_peer(
    layer: ValkeyPubSubChannelLayer, peer: RedisPubSubChannelLayer
) -> None:
    assert layer.serialize(MESSAGE) == peer.serialize(MESSAGE)
