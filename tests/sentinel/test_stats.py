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
