"""The names the Pub/Sub layer documents for tools (``queue_key_layout``, ``group_channel_name``,
``group_channel_layout``), checked against what it writes and subscribes: ``channels-valkey inspect`` reads worker
queues and groups back through them alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

if TYPE_CHECKING:
    from pubsub.conftest import Topology

# The two layouts there are: plain names, and hash-tagged queue keys with sharded Pub/Sub on a cluster.
pytestmark = pytest.mark.parametrize("topology", ["single", "cluster"], indirect=True)


def _name_in(layout: tuple[str, str], name: str) -> str | None:
    head, tail = layout
    if len(name) > len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
        return name[len(head) : len(name) - len(tail)]
    return None


def _subscribed(topology: Topology, prefix: str) -> list[str]:
    """The Pub/Sub names under ``prefix`` with a subscriber, on every server (the test prefixes hold no globs)."""
    names: list[str] = []
    for server in topology.servers:
        with server.client() as client:
            listing = "SHARDCHANNELS" if topology.cluster else "CHANNELS"
            names.extend(raw.decode() for raw in client.execute_command("PUBSUB", listing, prefix + "*"))
    return names


async def test_layouts_are_those_of_the_names(layer: ValkeyPubSubChannelLayer) -> None:
    head, tail = layer.queue_key_layout
    assert layer.queue_key("layout.worker") == head + "layout.worker" + tail
    head, tail = layer.group_channel_layout
    assert layer.group_channel_name("layout-room") == head + "layout-room" + tail


async def test_queues_and_group_channels_read_back_to_their_names(
    layer: ValkeyPubSubChannelLayer, topology: Topology
) -> None:
    await layer.send("layout.worker", {"type": "layout"})
    member = await layer.new_channel()
    await layer.group_add("layout-room", member)

    queues = [
        _name_in(layer.queue_key_layout, raw.decode()) for raw in topology.keys(layer.queue_key_layout[0])
    ]
    assert queues == ["layout.worker"]
    groups = [
        group
        for name in _subscribed(topology, layer.prefix)
        if (group := _name_in(layer.group_channel_layout, name)) is not None
    ]
    assert groups == ["layout-room"]
    assert topology.subscribers(layer.group_channel_name("layout-room")) == 1
