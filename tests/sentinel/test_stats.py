"""``layer.stats()``: the same JSON-serialisable snapshot from both layers, counting what really went through.

Both layers build it with ``channels_valkey.sentinel.layer_stats`` from their ``MessageCounts`` and
``DropCounters``; each case runs on both, on one server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]

LAYERS = [ValkeyChannelLayer, ValkeyPubSubChannelLayer]


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_sent_and_received_are_counted_by_kind(
    layer_class: type[Any], valkey_url: str, key_prefix: str, receive: Receive
) -> None:
    layer = layer_class(hosts=[valkey_url], prefix=key_prefix)
    try:
        normal = f"{key_prefix}jobs"
        members = [await layer.new_channel() for _ in range(3)]
        for channel in members:
            await layer.group_add("room", channel)
        for n in range(4):
            await layer.send(normal, {"type": "job", "n": n})
        await layer.send(members[0], {"type": "direct"})
        await layer.group_send("room", {"type": "grouped"})
        await layer.group_send("room", {"type": "grouped"})

        for _ in range(4):
            await receive(layer, normal)
        for channel in members:
            for _ in range(3 if channel == members[0] else 2):
                await receive(layer, channel)

        stats = layer.stats()
        assert stats["layer"] == ("core" if layer_class is ValkeyChannelLayer else "pubsub")
        assert stats["sent"] == {"normal": 4, "process": 1, "group": 2}
        assert stats["received"] == {"normal": 4, "process": 7}
        assert stats["held"] == {"normal": 0, "process": 0}
        assert stats["dropped"] == layer.counters.as_dict()
        assert json.loads(json.dumps(stats)) == stats
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_held_counts_what_reached_the_process_and_waits_for_a_receive(
    layer_class: type[Any], valkey_url: str, key_prefix: str, receive: Receive, eventually: Eventually
) -> None:
    layer = layer_class(hosts=[valkey_url], prefix=key_prefix)
    try:
        channel, other = await layer.new_channel(), await layer.new_channel()
        # A receive waiting on another channel of this process keeps the core layer's reader of the process's
        # queue popping, so what is sent to ``channel`` reaches the process (the Pub/Sub layer's subscriber gets it
        # anyway); nothing is sent to ``other``.
        waiting = asyncio.create_task(layer.receive(other))
        await eventually(lambda: layer.stats()["held"] == {"normal": 0, "process": 0}, "the receive to start")
        for n in range(5):
            await layer.send(channel, {"type": "later", "n": n})
        await eventually(
            lambda: layer.stats()["held"]["process"] == 5, "the five messages to reach the process"
        )
        assert await receive(layer, channel) == {"type": "later", "n": 0}
        assert layer.stats()["held"]["process"] == 4
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_a_fresh_layer_has_all_keys_at_zero(layer_class: type[Any], valkey_url: str) -> None:
    layer = layer_class(hosts=[valkey_url])
    stats = layer.stats()  # no event loop work needed, nothing connects
    assert stats["sent"] == {"normal": 0, "process": 0, "group": 0}
    assert stats["received"] == {"normal": 0, "process": 0}
    assert stats["held"] == {"normal": 0, "process": 0}
    assert set(stats["dropped"]) == {"expired", "undecodable", "group_over_capacity", "buffer_overflow"}


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_wait_times_and_group_fanout_are_recorded(
    layer_class: type[Any], valkey_url: str, key_prefix: str, receive: Receive
) -> None:
    layer = layer_class(hosts=[valkey_url], prefix=key_prefix)
    try:
        normal = f"{key_prefix}jobs"
        members = [await layer.new_channel() for _ in range(3)]
        for channel in members:
            await layer.group_add("room", channel)
        await layer.send(normal, {"type": "job", "n": 0})
        await layer.send(normal, {"type": "job", "n": 1})
        await layer.send(members[0], {"type": "direct"})
        await asyncio.sleep(0.2)  # the messages wait this long on purpose: the recorded waits must show it
        await receive(layer, normal)
        await receive(layer, normal)
        await receive(layer, members[0])
        await layer.group_send("room", {"type": "grouped"})
        await layer.group_send("room", {"type": "grouped"})
        for channel in members:
            for _ in range(2):
                await receive(layer, channel)

        stats = layer.stats()
        normal_waits = stats["waited"]["normal"]
        assert normal_waits["count"] == 2
        assert 0.4 <= normal_waits["sum"] < 2 * layer.expiry
        process_waits = stats["waited"]["process"]
        if layer_class is ValkeyChannelLayer:
            # Process channels travel in the process's queue too: the direct message and the group's six.
            assert process_waits["count"] == 7
            assert process_waits["sum"] >= 0.2
        else:
            assert (process_waits["count"], process_waits["sum"]) == (
                0,
                0.0,
            )  # published: no send time to read
        # Cumulative buckets, as Prometheus's: both normal messages waited more than 0.1 s and less than a minute.
        assert normal_waits["buckets"]["0.1"] == 0
        assert normal_waits["buckets"]["60"] == normal_waits["buckets"]["+Inf"] == 2
        # Two group messages, each reaching the three members (counted where they arrive, on the Pub/Sub layer).
        fanout = stats["fanout"]
        assert (fanout["count"], fanout["sum"]) == (2, 6.0)
        assert fanout["buckets"]["2"] == 0
        assert fanout["buckets"]["5"] == 2
        assert json.loads(json.dumps(stats)) == stats
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_open_connections_and_reconnects_are_counted_per_shard(
    layer_class: type[Any], fault_proxy: Any, key_prefix: str, receive: Receive, eventually: Eventually
) -> None:
    layer = layer_class(hosts=[fault_proxy.url()], prefix=key_prefix)
    try:
        # A normal channel: it travels in a queue on both layers, so what is sent after the cut waits there while
        # the Pub/Sub layer's subscriber reconnects (a published message would be lost meanwhile, by design).
        channel = f"{key_prefix}jobs"
        await layer.send(channel, {"type": "before"})
        assert await receive(layer, channel) == {"type": "before"}
        shard = layer.stats()["shards"]["0"]
        assert shard["open_connections"] >= 1
        assert shard["reconnects"] == 0
        assert shard["failovers"] == 0
        assert shard["restarts"] == 0

        waiting = asyncio.create_task(receive(layer, channel))
        await eventually(lambda: fault_proxy.connection_count >= 2, "the receive to block on the server")
        assert fault_proxy.cut() >= 1
        await eventually(lambda: layer.stats()["shards"]["0"]["reconnects"] >= 1, "the reconnection count")
        await layer.send(channel, {"type": "after"})
        assert await waiting == {"type": "after"}
        assert layer.stats()["shards"]["0"]["restarts"] == 0  # reconnected to the same server
        await layer.close_pools()
        assert layer.stats()["shards"]["0"]["open_connections"] == 0
    finally:
        await layer.flush()
        await layer.close_pools()
