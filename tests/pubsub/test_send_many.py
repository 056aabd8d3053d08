"""``send_many`` and ``group_send_many`` of the Pub/Sub layer, on every topology (the shared scenarios of
tests/bulk_patterns.py), plus what only this layer has: groups on every shard, worker channels that travel on
Pub/Sub, the commands a bulk call makes, and a lost reply."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import bulk_patterns
import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import GroupSendManyResult, SendManyResult

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess
from servers.topologies import add_acl_user

if TYPE_CHECKING:
    from pubsub.conftest import Topology

Receive = Callable[..., Awaitable[dict[str, Any]]]
MakeLayer = Callable[..., ValkeyPubSubChannelLayer]
#: What channels-valkey 0.3 documented for a Pub/Sub layer's ACL user (as tests/pubsub/test_acl.py).
LEGACY_COMMANDS = ["publish", "subscribe", "unsubscribe"]


async def test_every_message_arrives_once_in_order(layer: ValkeyPubSubChannelLayer, receive: Receive) -> None:
    await bulk_patterns.every_message_arrives_once_in_order(layer, receive, ["bulk.a", "bulk.b", "bulk.c"])


async def test_full_channels_are_reported_not_written(make_layer: MakeLayer, receive: Receive) -> None:
    await bulk_patterns.full_channels_are_reported_not_written(make_layer, receive)


async def test_bad_pairs_raise_before_anything_is_written(
    layer: ValkeyPubSubChannelLayer, topology: Topology, layer_prefix: str
) -> None:
    await bulk_patterns.bad_pairs_raise_before_anything_is_written(layer, lambda: topology.keys(layer_prefix))


async def test_groups_of_process_channels(layer: ValkeyPubSubChannelLayer, receive: Receive) -> None:
    await bulk_patterns.groups_of_process_channels(layer, receive, per_group=True)


async def test_encrypted(make_layer: MakeLayer, receive: Receive) -> None:
    await bulk_patterns.encrypted(make_layer, receive, "bulk.secret")


async def test_groups_on_every_shard_reach_members_of_two_layers(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    """Thirty groups, placed on every shard, with members in two layer instances (two processes)."""
    layers = [make_layer(), make_layer()]
    channels = [(layer, await layer.new_channel()) for layer in layers for _ in range(3)]
    # Names picked so that every shard holds ten groups: where a group's channel lands depends on the test's random
    # prefix, and CRC32 of names that differ in their last characters alone can leave a shard out.
    wanted = 1 if topology.cluster else len(topology.servers)
    per_shard: dict[int, list[str]] = {shard: [] for shard in range(wanted)}
    for index in itertools.count():
        name = f"bulk-room{index}"
        placed = per_shard.setdefault(layers[0].consistent_hash(layers[0].group_channel_name(name)), [])
        if len(placed) < 30 // wanted:
            placed.append(name)
        if all(len(names) >= 30 // wanted for names in per_shard.values()):
            break
    names = sorted(name for placed in per_shard.values() for name in placed)
    groups = {name: [channels[(index + k) % 6] for k in range(2)] for index, name in enumerate(names)}
    for group, members in groups.items():
        for layer, channel in members:
            await layer.group_add(group, channel)
    shards = {layers[0].consistent_hash(layers[0].group_channel_name(group)) for group in groups}
    assert len(shards) == wanted
    pairs = [(group, {"type": "bulk.group", "group": group, "n": n}) for n in range(2) for group in groups]
    assert await layers[0].group_send_many(pairs) == GroupSendManyResult(sent=60, over_capacity={})
    for layer in layers:
        expected = {
            channel: [message for group, message in pairs if (layer, channel) in groups[group]]
            for owner, channel in channels
            if owner is layer
        }
        await bulk_patterns.receive_exactly(layer, receive, expected, per_group=True)


@pytest.mark.parametrize("topology", ["single", "cluster"], indirect=True)
async def test_worker_channels_on_pubsub_are_published(
    make_layer: MakeLayer,
    receive: Receive,
    topology: Topology,
    eventually_blocking: Callable[..., Awaitable[None]],
) -> None:
    """``worker_channels="pubsub"``: normal channels are published, as send publishes them, in order."""
    layer = make_layer(worker_channels="pubsub")
    receiving = asyncio.ensure_future(receive(layer, "bulk.pub"))
    await eventually_blocking(lambda: topology.subscribers("bulk.pub") == 1, "the receive to subscribe")
    result = await layer.send_many([("bulk.pub", {"n": n}) for n in range(3)])
    assert result == SendManyResult(3, ())
    assert [await receiving, await receive(layer, "bulk.pub"), await receive(layer, "bulk.pub")] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]
    assert topology.keys(layer.prefix) == []


async def test_one_script_call_per_chunk_and_one_publish_per_message(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    """600 messages to worker channels are 3 script calls of 250 at most; 300 group sends are 300 PUBLISHes (on a
    server of this test's own, so that no other test's commands are counted)."""
    server = server_factory()
    layer = ValkeyPubSubChannelLayer(hosts=[server.url()], prefix=key_prefix, capacity=1000)
    try:
        await layer.send_many([("bulk.warm", {"type": "load the script"})])
        before = _calls(server, "evalsha", "eval")
        assert (await layer.send_many([(f"bulk.c{n % 6}", {"n": n}) for n in range(600)])).sent == 600
        assert _calls(server, "evalsha", "eval") - before == 3
        before = _calls(server, "publish")
        assert (await layer.group_send_many([(f"bulk-g{n}", {"n": n}) for n in range(300)])).sent == 300
        assert _calls(server, "publish") - before == 300
        assert [(await receive(layer, "bulk.c4"))["n"] for _ in range(100)] == list(range(4, 600, 6))
    finally:
        await layer.flush()
        await layer.close_pools()


class _TaggedLayer(ValkeyPubSubChannelLayer):
    """A layer whose serialize is overridden, as channels-valkey 0.3 allowed: its bytes are used for every send."""

    def serialize(self, message: dict[str, Any]) -> bytes:
        return b"tagged:" + super().serialize(message)


@pytest.mark.parametrize(
    ("layer_class", "settings"),
    [
        (ValkeyPubSubChannelLayer, {}),
        (ValkeyPubSubChannelLayer, {"serializer_format": "json"}),
        (_TaggedLayer, {}),
    ],
)
async def test_group_send_many_publishes_what_group_send_publishes(
    valkey_server: ValkeyProcess, key_prefix: str, layer_class: type[ValkeyPubSubChannelLayer], settings: Any
) -> None:
    """Each message goes out under its group's Pub/Sub name in the bytes its own group_send publishes, whatever
    the bulk call's shortcuts: one dict given for many groups, or one after another, is the same bytes each time."""
    layer = layer_class(hosts=[valkey_server.url()], prefix=key_prefix, **settings)
    shared = {"type": "room.notice", "text": "to every room"}
    pairs = [(f"bulk-room{n}", shared) for n in range(4)]
    pairs += [(f"bulk-room{n}", {"type": "room.own", "n": n, "data": b"\x00\xff"}) for n in range(4)]
    pairs += [("bulk-room9", shared), ("bulk-room0", {"type": "last"}), ("bulk-room1", shared)]
    with valkey_server.client() as client, client.pubsub() as watcher:
        watcher.psubscribe(f"{key_prefix}*")
        assert watcher.get_message(timeout=5)["type"] == "psubscribe"

        def published() -> list[tuple[bytes, bytes]]:
            seen = [watcher.get_message(timeout=5) for _ in pairs]
            return [(message["channel"], message["data"]) for message in seen]

        try:
            for group, message in pairs:
                await layer.group_send(group, message)
            one_by_one = published()
            assert (await layer.group_send_many(pairs)).sent == len(pairs)
            assert published() == one_by_one
            assert watcher.get_message(timeout=0.2) is None
        finally:
            await layer.close_pools()
    assert [channel for channel, _ in one_by_one] == [
        layer.group_channel_name(group).encode() for group, _ in pairs
    ]
    assert one_by_one[0][1] == layer.serialize(shared)


def _calls(server: ValkeyProcess, *commands: str) -> int:
    stats = server.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in commands)


async def test_a_send_many_whose_reply_was_lost_raises_and_is_not_sent_again(
    fault_proxy: FaultProxy, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    await bulk_patterns.reply_lost_is_not_sent_again(
        ValkeyPubSubChannelLayer, fault_proxy, valkey_server.url(), key_prefix, "sent"
    )


async def test_a_user_limited_to_pubsub_gets_bulk_publishes_as_a_pipeline(
    secured_valkey: ValkeyProcess, key_prefix: str, receive: Receive
) -> None:
    """The ACL of channels-valkey 0.3 (no scripts): the publishes go as a pipeline of PUBLISH, worker channels fall
    back to Pub/Sub as send does, and the order holds."""
    add_acl_user(
        secured_valkey, "bulk-pubsub", "pw", [f"&{key_prefix}*", *(f"+{c}" for c in LEGACY_COMMANDS)]
    )
    host, port = secured_valkey.address
    layer = ValkeyPubSubChannelLayer(hosts=[f"valkey://bulk-pubsub:pw@{host}:{port}"], prefix=key_prefix)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        pairs = [(channel, {"n": 0}), (channel, {"n": 1})]
        assert await layer.send_many(pairs) == SendManyResult(2, ())
        assert (await layer.group_send_many([("room", {"n": 2}), ("room", {"n": 3})])).sent == 2
        assert [(await receive(layer, channel))["n"] for _ in range(4)] == [0, 1, 2, 3]
        assert layer._connections.facts(0).scripts_refused
    finally:
        await layer.close_pools()
