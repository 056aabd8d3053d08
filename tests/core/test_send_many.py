"""``send_many`` and ``group_send_many`` of the core layer, on every topology (the shared scenarios of
tests/bulk_patterns.py), plus what only this layer has: groups of normal channels spread over the shards, members
over capacity, the number of script calls, and a lost reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import bulk_patterns
import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.sentinel import GroupSendManyResult, ResiliencePolicy, ShardUnavailable

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess, free_port

if TYPE_CHECKING:
    from core.conftest import Topology

Receive = Callable[..., Awaitable[dict[str, Any]]]
MakeLayer = Callable[..., ValkeyChannelLayer]


async def test_every_message_arrives_once_in_order(layer: ValkeyChannelLayer, receive: Receive) -> None:
    await bulk_patterns.every_message_arrives_once_in_order(layer, receive, ["bulk.a", "bulk.b", "bulk.c"])


async def test_full_channels_are_reported_not_written(make_layer: MakeLayer, receive: Receive) -> None:
    await bulk_patterns.full_channels_are_reported_not_written(make_layer, receive)


async def test_bad_pairs_raise_before_anything_is_written(
    layer: ValkeyChannelLayer, topology: Topology, layer_prefix: str
) -> None:
    await bulk_patterns.bad_pairs_raise_before_anything_is_written(layer, lambda: topology.keys(layer_prefix))


async def test_groups_of_process_channels(layer: ValkeyChannelLayer, receive: Receive) -> None:
    await bulk_patterns.groups_of_process_channels(layer, receive)


async def test_encrypted(
    make_layer: MakeLayer, receive: Receive, topology: Topology, layer_prefix: str
) -> None:
    await bulk_patterns.encrypted(make_layer, receive, "bulk.secret")
    layer = make_layer(symmetric_encryption_keys=["a long random secret for the bulk tests"])
    await layer.send_many([("bulk.raw", {"type": "plain-text-marker"})])
    (stored,) = topology.members(layer.queue_key("bulk.raw"))
    assert b"plain-text-marker" not in stored
    assert layer.deserialize(stored) == {"type": "plain-text-marker"}


async def test_groups_of_normal_channels_on_every_shard(
    layer: ValkeyChannelLayer, receive: Receive, topology: Topology, layer_prefix: str
) -> None:
    """Forty groups (on every shard) of normal channels (queues on every shard), members shared between groups."""
    channels = [f"bulk.member{index}" for index in range(12)]
    groups = {f"bulk-room{index}": [channels[(index * 5 + k) % 12] for k in range(3)] for index in range(40)}
    for group, members in groups.items():
        for channel in members:
            await layer.group_add(group, channel)
    ring = await layer.shard_ring()
    assert len({ring.index(group) for group in groups}) == topology.shard_count
    assert len({ring.index(channel) for channel in channels}) == topology.shard_count
    pairs = [(group, {"type": "bulk.group", "group": group, "n": n}) for n in range(2) for group in groups]
    result = await layer.group_send_many(pairs)
    assert result == GroupSendManyResult(sent=80, over_capacity={})
    expected = {
        channel: [message for group, message in pairs if channel in groups[group]] for channel in channels
    }
    await bulk_patterns.receive_exactly(layer, receive, expected)


async def test_members_over_capacity_are_reported_counted_and_logged(
    make_layer: MakeLayer, receive: Receive, caplog: pytest.LogCaptureFixture, layer_prefix: str
) -> None:
    """As group_send: a member whose queue is full misses the message; the result lists it under its group."""
    bulk, single = make_layer(capacity=2), make_layer(capacity=2, prefix=layer_prefix + "-single")
    for layer in (bulk, single):
        for group, channel in [("bulk-a", "bulk.slow"), ("bulk-a", "bulk.fast"), ("bulk-b", "bulk.slow")]:
            await layer.group_add(group, channel)
        await layer.send("bulk.slow", {"n": 0})
    pairs = [("bulk-a", {"n": 1}), ("bulk-b", {"n": 2}), ("bulk-a", {"n": 3})]
    with caplog.at_level("INFO", logger="channels_valkey.core"):
        result = await bulk.group_send_many(pairs)
    for group, message in pairs:
        await single.group_send(group, message)
    # bulk.slow has room for one: {"n": 1} of bulk-a; then it is full for bulk-b and the second bulk-a.
    assert result == GroupSendManyResult(3, {"bulk-a": ("bulk.slow",), "bulk-b": ("bulk.slow",)})
    assert bulk.counters.group_over_capacity == single.counters.group_over_capacity == 2
    assert bulk.stats()["sent"] == single.stats()["sent"] == {"normal": 1, "process": 0, "group": 3}
    assert "1 of 1 channels over capacity in group bulk-b" in caplog.messages
    assert "1 of 2 channels over capacity in group bulk-a" in caplog.messages
    for layer in (bulk, single):
        await bulk_patterns.receive_exactly(
            layer, receive, {"bulk.slow": [{"n": 0}, {"n": 1}], "bulk.fast": [{"n": 1}, {"n": 3}]}
        )


async def test_a_few_script_calls_per_shard(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    """600 messages are 3 calls of 250 at most; 300 groups of one member each, 2 calls to read the members and 2
    to queue (on a server of this test's own, so that no other test's calls are counted)."""
    server = server_factory()
    layer = ValkeyChannelLayer(hosts=[server.url()], prefix=key_prefix, capacity=1000)
    try:
        await layer.send_many([("bulk.warm", {"type": "load the script"})])
        await layer.group_send_many([("bulk-warm", {"type": "load the script"})])
        before = _script_calls(server)
        await layer.send_many([(f"bulk.c{n % 6}", {"n": n}) for n in range(600)])
        assert _script_calls(server) - before == 3
        for index in range(300):
            await layer.group_add(f"bulk-g{index}", f"bulk.m{index % 7}")
        before = _script_calls(server)
        result = await layer.group_send_many([(f"bulk-g{index}", {"n": index}) for index in range(300)])
        assert _script_calls(server) - before == 4
        assert result.sent == 300
        got = [(await receive(layer, "bulk.m3"))["n"] for _ in range(len(range(3, 300, 7)))]
        assert got == list(range(3, 300, 7))
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_a_shard_that_cannot_be_read_fails_the_call_before_anything_is_written(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    """The members of every chunk of groups are read at once; when one shard's read fails, the call raises its
    error, queues nothing on the shard that answered, and leaves no read running behind it."""
    live = server_factory()
    policy = ResiliencePolicy(retry_attempts=1, retry_deadline=1.0, connect_timeout=0.5)
    hosts = [live.url(), f"valkey://127.0.0.1:{free_port()}"]
    layer = ValkeyChannelLayer(hosts=hosts, prefix=key_prefix, policy=policy)
    ring = await layer.shard_ring()
    groups = [f"bulk-g{index}" for index in range(600)]
    on_live = [group for group in groups if ring.index(group) == 0]
    assert len(on_live) > 250  # several chunks of reads on the live shard
    assert len(on_live) < len(groups)  # and some on the dead one
    try:
        member = next(f"bulk.m{index}" for index in range(100) if ring.index(f"bulk.m{index}") == 0)
        for group in on_live:
            await layer.group_add(group, member)
        keys_before = set(live.client().keys("*"))
        with pytest.raises(ShardUnavailable, match="shard 1"):
            await layer.group_send_many([(group, {"n": index}) for index, group in enumerate(groups)])
        assert set(live.client().keys("*")) == keys_before
        assert layer.stats()["sent"]["group"] == 0
        left = [task for task in asyncio.all_tasks() if "_start_member_reads" in repr(task.get_coro())]
        assert left == []
    finally:
        live.client().flushall()  # the test's own server; the layer's flush would fail on the dead shard
        await layer.close_pools()


def _script_calls(server: ValkeyProcess) -> int:
    stats = server.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_a_send_many_whose_reply_was_lost_raises_and_is_not_sent_again(
    fault_proxy: FaultProxy, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    await bulk_patterns.reply_lost_is_not_sent_again(
        ValkeyChannelLayer, fault_proxy, valkey_server.url(), key_prefix, "queued"
    )
