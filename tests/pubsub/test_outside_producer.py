"""A producer in another language writes messages exactly as the Pub/Sub README's "Publishing from outside Python"
says, here with a plain valkey client and msgpack (no layer code), and the layer receives them: if the layer's
names, scores or bytes change, this fails and the README must change with them."""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

if TYPE_CHECKING:
    from pubsub.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single", "shards"], indirect=True)

Receive = Callable[..., Awaitable[dict[str, Any]]]


def _server_of(topology: Topology, name: str) -> Any:
    """The shard of ``name`` as the README gives it: CRC32 of the name, its low 12 bits, spread over the shards."""
    bucket = zlib.crc32(name.encode()) & 0xFFF
    return topology.servers[int(bucket / (4096 / len(topology.servers)))]


async def test_messages_written_outside_are_received(
    layer: ValkeyPubSubChannelLayer,
    topology: Topology,
    layer_prefix: str,
    receive: Receive,
) -> None:
    channel = await layer.new_channel()  # subscribed before it is returned
    with _server_of(topology, channel).client() as client:
        assert client.publish(channel, msgpack.packb({"type": "outside.direct"})) == 1
    assert await receive(layer, channel) == {"type": "outside.direct"}

    await layer.group_add("outside-room", channel)
    group = f"{layer_prefix}__group__outside-room"
    with _server_of(topology, group).client() as client:
        assert client.publish(group, msgpack.packb({"type": "outside.group"})) == 1
    assert await receive(layer, channel) == {"type": "outside.group"}

    # A worker channel: a sorted set, member = 12 random bytes + the payload, score = the Unix time.
    key = f"{layer_prefix}__worker__outside.jobs"
    with _server_of(topology, "outside.jobs").client() as client:
        client.zadd(key, {os.urandom(12) + msgpack.packb({"type": "outside.job"}): time.time()})
        client.expire(key, 60)
    assert await receive(layer, "outside.jobs") == {"type": "outside.job"}
