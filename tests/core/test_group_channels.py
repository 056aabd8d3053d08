"""``group_channels(group)``: the channels in a group now, read from the group's shard, without members older than
``group_expiry``, including members that channels_redis 4 processes added (a mixed fleet shares groups)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer

if TYPE_CHECKING:
    from core.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single", "shards"], indirect=True)


def _group_key(prefix: str, group: str) -> str:
    return f"{prefix}:group:{group}"


async def test_lists_the_members_from_the_groups_shard(
    layer: ValkeyChannelLayer, topology: Topology, layer_prefix: str
) -> None:
    process = await layer.new_channel()
    for channel in ("gc.one", "gc.two", process):
        await layer.group_add("gc-room", channel)
    await layer.group_add("gc-room", "gc.one")  # added twice, listed once
    assert sorted(await layer.group_channels("gc-room")) == sorted(["gc.one", "gc.two", process])

    # The group lives on the shard the ring gives its name, and only there.
    key = _group_key(layer_prefix, "gc-room")
    holders = []
    for index, server in enumerate(topology.servers):
        with server.client() as client:
            if client.exists(key):
                holders.append(index)
    assert holders == [layer.consistent_hash("gc-room")]

    await layer.group_discard("gc-room", "gc.two")
    assert sorted(await layer.group_channels("gc-room")) == sorted(["gc.one", process])


async def test_an_unknown_group_has_no_members(layer: ValkeyChannelLayer) -> None:
    assert await layer.group_channels("gc-nobody") == []


async def test_members_older_than_group_expiry_are_not_listed(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str
) -> None:
    layer = make_layer(group_expiry=60)
    await layer.group_add("gc-aging", "gc.fresh")
    key = _group_key(layer_prefix, "gc-aging")
    server = topology.servers[layer.consistent_hash("gc-aging")]
    with server.client() as client:
        # What a group_add 61 and 59 seconds ago left behind.
        client.zadd(key, {"gc.expired": time.time() - 61, "gc.recent": time.time() - 59})
    assert sorted(await layer.group_channels("gc-aging")) == ["gc.fresh", "gc.recent"]
    with server.client() as client:
        assert client.zscore(key, "gc.expired") is None  # removed, as group_send would


async def test_members_added_by_channels_redis_are_listed(
    layer: ValkeyChannelLayer, peer: RedisChannelLayer
) -> None:
    peer_channel = await peer.new_channel()
    await peer.group_add("gc-fleet", peer_channel)
    await peer.group_add("gc-fleet", "gc.peer-normal")
    await layer.group_add("gc-fleet", "gc.ours")
    assert sorted(await layer.group_channels("gc-fleet")) == sorted(
        [peer_channel, "gc.peer-normal", "gc.ours"]
    )
    await peer.group_discard("gc-fleet", "gc.peer-normal")
    assert sorted(await layer.group_channels("gc-fleet")) == sorted([peer_channel, "gc.ours"])


@pytest.mark.parametrize("group", ["", "bad group", "x" * 100, "trailing\n", "caf\u00e9", 42])
async def test_an_invalid_group_name_is_refused(
    layer: ValkeyChannelLayer, topology: Topology, layer_prefix: str, group: object
) -> None:
    with pytest.raises(TypeError, match="invalid group name"):
        await layer.group_channels(group)  # type: ignore[arg-type]
    assert topology.keys(layer_prefix) == []
