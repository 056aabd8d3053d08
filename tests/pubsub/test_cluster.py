"""The Pub/Sub layer on a Valkey Cluster: sharded Pub/Sub, where each publish goes to the one primary serving its
name's slot and each event loop keeps one subscriber connection per node it needs; worker queues that carry their
channel as a hash tag; the notices when a node's connection is cut. (The conformance suite runs on the cluster
too; failover and resharding are in test_cluster_faults.py.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import ShardUnavailable

from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess, free_port, wait_until

Receive = Callable[..., Awaitable[dict[str, Any]]]
ClusterHosts = Callable[[ValkeyCluster], list[Any]]


@pytest.fixture
async def layer(
    valkey_cluster: ValkeyCluster, key_prefix: str, cluster_hosts: ClusterHosts
) -> AsyncIterator[ValkeyPubSubChannelLayer]:
    made = ValkeyPubSubChannelLayer(
        hosts=cluster_hosts(valkey_cluster),
        prefix=key_prefix,
        on_disconnect="layer.down",
        on_reconnect="layer.up",
    )
    yield made
    try:
        await asyncio.wait_for(made.flush(), 10)
    finally:
        await asyncio.wait_for(made.close_pools(), 10)


def _publish_calls(node: ValkeyProcess) -> dict[str, int]:
    stats = node.info("commandstats")
    return {kind: int(stats.get(f"cmdstat_{kind}", {}).get("calls", 0)) for kind in ("publish", "spublish")}


def _shard_subscribers(node: ValkeyProcess, name: str) -> int:
    with node.client() as client:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", name)[1])


async def _channels_on_every_primary(
    layer: ValkeyPubSubChannelLayer, cluster: ValkeyCluster
) -> dict[str, ValkeyProcess]:
    """New channels until each primary serves at least one of them, with the primary of each."""
    owners: dict[str, ValkeyProcess] = {}
    primaries = {node.address for node in cluster.primaries()}
    while {node.address for node in owners.values()} != primaries:
        channel = await layer.new_channel()
        owners[channel] = cluster.primary_for(channel)
        if len(owners) > 100:
            pytest.fail("100 channels and still a primary without one")
    return owners


async def test_a_publish_goes_to_the_one_primary_serving_the_name(
    layer: ValkeyPubSubChannelLayer, valkey_cluster: ValkeyCluster, receive: Receive
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    owners = {channel: valkey_cluster.primary_for(channel)}
    group = f"{layer.prefix}__group__room"
    owners[group] = valkey_cluster.primary_for(group)
    primaries = valkey_cluster.primaries()
    before = {node.address: _publish_calls(node) for node in primaries}
    for n in range(10):
        await layer.send(channel, {"type": "direct", "n": n})
        await layer.group_send("room", {"type": "group", "n": n})
    got = [await receive(layer, channel) for _ in range(20)]
    assert sorted((m["type"], m["n"]) for m in got) == sorted(
        (kind, n) for kind in ("direct", "group") for n in range(10)
    )
    expected = {node.address: 0 for node in primaries}
    for owner in owners.values():
        expected[owner.address] += 10
    after = {node.address: _publish_calls(node) for node in primaries}
    assert {
        address: after[address]["spublish"] - before[address]["spublish"] for address in after
    } == expected
    assert all(after[address]["publish"] == before[address]["publish"] for address in after), "no PUBLISH"


async def test_one_subscriber_connection_per_node_serving_subscribed_slots(
    layer: ValkeyPubSubChannelLayer, valkey_cluster: ValkeyCluster, receive: Receive
) -> None:
    owners = await _channels_on_every_primary(layer, valkey_cluster)
    for channel, owner in owners.items():
        assert _shard_subscribers(owner, channel) == 1
    state = layer.loop_state()
    assert state is not None
    assert state.subscribers[0].connections_made == len(valkey_cluster.primaries())
    for channel in owners:
        await layer.send(channel, {"type": "hello"})
    for channel in owners:
        assert await receive(layer, channel) == {"type": "hello"}


async def test_worker_queue_lives_in_the_slot_of_its_channel(
    layer: ValkeyPubSubChannelLayer, valkey_cluster: ValkeyCluster, receive: Receive
) -> None:
    await layer.send("jobs.resize", {"type": "job"})
    key = f"{layer.prefix}__worker__{{jobs.resize}}"
    assert valkey_cluster.key_slot(key) == valkey_cluster.key_slot("jobs.resize")
    with valkey_cluster.primary_for("jobs.resize").client() as client:
        assert client.zcard(key) == 1
    assert await receive(layer, "jobs.resize") == {"type": "job"}


async def test_a_cut_node_connection_gives_notices_only_to_its_channels(
    layer: ValkeyPubSubChannelLayer, valkey_cluster: ValkeyCluster, receive: Receive
) -> None:
    owners = await _channels_on_every_primary(layer, valkey_cluster)
    cut_node = next(iter(owners.values()))
    on_cut = [channel for channel, owner in owners.items() if owner.address == cut_node.address]
    elsewhere = [channel for channel in owners if channel not in on_cut]
    with cut_node.client() as client:
        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for channel in on_cut:
        assert await receive(layer, channel) == {"type": "layer.down"}
    for channel in on_cut:
        assert await receive(layer, channel) == {"type": "layer.up"}
    for channel in owners:
        await layer.send(channel, {"type": "after"})
    # The other nodes' channels got no notice: their first message is the one sent after the cut.
    for channel in elsewhere + on_cut:
        assert await receive(layer, channel) == {"type": "after"}
    for channel in on_cut:
        assert _shard_subscribers(cut_node, channel) == 1


async def test_a_cluster_that_never_answered_fails_at_once(key_prefix: str) -> None:
    layer = ValkeyPubSubChannelLayer(
        hosts=[{"cluster": [f"valkey://127.0.0.1:{free_port()}"]}], prefix=key_prefix
    )
    try:
        with pytest.raises(ShardUnavailable, match="told the slot map"):
            await asyncio.wait_for(layer.new_channel(), 5)
        with pytest.raises(ShardUnavailable):
            await asyncio.wait_for(layer.send("specific.x!y", {"type": "x"}), 5)
        with pytest.raises(ShardUnavailable):
            await asyncio.wait_for(layer.receive("specific.x!y"), 5)
    finally:
        await layer.close_pools()


def test_prefix_with_braces_is_refused_on_a_cluster_only(
    valkey_cluster: ValkeyCluster, valkey_url: str, cluster_hosts: ClusterHosts
) -> None:
    with pytest.raises(ValueError, match=r"prefix 'app\{1\}' cannot hold '\{' or '\}' on a Valkey Cluster"):
        ValkeyPubSubChannelLayer(hosts=cluster_hosts(valkey_cluster), prefix="app{1}")
    assert ValkeyPubSubChannelLayer(hosts=[valkey_url], prefix="app{1}").prefix == "app{1}"


async def _conversation(layer: ValkeyPubSubChannelLayer, number: int) -> list[dict[str, Any]]:
    channel = await layer.new_channel()
    room = f"room-{channel[-12:]}"
    await layer.group_add(room, channel)
    await layer.send(channel, {"type": "direct", "n": number})
    await layer.group_send(room, {"type": "grouped", "n": number})
    return [
        await asyncio.wait_for(layer.receive(channel), 5),
        await asyncio.wait_for(layer.receive(channel), 5),
    ]


def test_async_to_sync_calls_in_threads_leave_no_node_connection_behind(
    valkey_cluster: ValkeyCluster, key_prefix: str, cluster_hosts: ClusterHosts
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=cluster_hosts(valkey_cluster), prefix=key_prefix)
    results: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_ in range(3):
                results[number * 10 + round_] = async_to_sync(_conversation)(layer, number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert {key: [m["type"] for m in got] for key, got in results.items()} == {
        n * 10 + r: ["direct", "grouped"] for n in range(3) for r in range(3)
    }

    def nothing_left() -> bool:
        for node in valkey_cluster.primaries():
            with node.client() as client:
                if client.execute_command("PUBSUB", "SHARDCHANNELS", f"{key_prefix}*"):
                    return False
                if client.execute_command("CLIENT", "LIST", "TYPE", "pubsub").strip():
                    return False
        return True

    wait_until(nothing_left, timeout=5, message="every loop's subscriptions and node connections to go")
