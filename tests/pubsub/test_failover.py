"""Sentinel failovers: publishers and subscribers move to the new primary in bounded time, with the notices.

Graceful ``SENTINEL FAILOVER``: within 2 s of the switch (the peers stay on the demoted node for about 10 s).
``kill -9`` of the primary: within the failover time + 1 s, in plaintext and through TLS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.process import ValkeyProcess
from servers.topologies import SentinelGroup

Receive = Callable[..., Awaitable[dict[str, Any]]]


async def _on_node(node: ValkeyProcess, names: list[str]) -> bool:
    def ask() -> bool:
        with node.client(socket_timeout=1) as client:
            return set(dict(client.pubsub_numsub(*names)).values()) == {1}

    try:
        return await asyncio.to_thread(ask)
    except OSError:
        return False


async def _round_trip_on(
    layer: ValkeyPubSubChannelLayer,
    node: ValkeyProcess,
    alone: str,
    grouped: str,
    since: float,
    within: float,
) -> float:
    """Seconds from ``since`` until both subscriptions are on ``node`` and a direct and a group message arrive."""
    deadline = since + within + 5
    n = 0
    while time.monotonic() < deadline:
        n += 1
        if await _on_node(node, [alone, grouped]):
            try:
                await layer.send(alone, {"type": "probe", "n": n})
                await layer.group_send("room", {"type": "probe", "n": n})
                first = await _next_probe(layer, alone, n)
                second = await _next_probe(layer, grouped, n)
            except (TimeoutError, OSError):
                continue
            if first and second:
                return time.monotonic() - since
        await asyncio.sleep(0.05)
    pytest.fail("the layer never worked on the new primary")


async def _next_probe(layer: ValkeyPubSubChannelLayer, channel: str, n: int) -> bool:
    """Read ``channel`` up to probe ``n`` (notices and earlier probes may come first)."""
    while True:
        message = await asyncio.wait_for(layer.receive(channel), 0.5)
        if message.get("n") == n:
            return True


async def _setup(group: SentinelGroup, prefix: str) -> tuple[ValkeyPubSubChannelLayer, str, str]:
    layer = ValkeyPubSubChannelLayer(
        hosts=[group.host_entry()], prefix=prefix, on_disconnect="layer.down", on_reconnect="layer.up"
    )
    alone, grouped = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", grouped)
    return layer, alone, grouped


async def _notices(layer: ValkeyPubSubChannelLayer, channel: str, receive: Receive) -> list[str]:
    """The first two messages of ``channel``: the disconnect and reconnect notices, in that order."""
    return [(await receive(layer, channel, 20))["type"] for _ in range(2)]


async def test_graceful_failover(
    private_sentinel_group: SentinelGroup, key_prefix: str, receive: Receive
) -> None:
    group = private_sentinel_group
    layer, alone, grouped = await _setup(group, key_prefix)
    try:
        old = group.current_primary()
        await asyncio.to_thread(group.failover)
        new = await asyncio.to_thread(group.wait_for_new_primary, old, 20)
        switched = time.monotonic()
        assert await _notices(layer, alone, receive) == ["layer.down", "layer.up"]
        assert await _notices(layer, grouped, receive) == ["layer.down", "layer.up"]
        took = await _round_trip_on(layer, new, alone, grouped, switched, 2.0)
        print(f"\ngraceful failover: working on the new primary {took:.2f}s after the switch")
        assert took < 2.0
    finally:
        await layer.close_pools()


async def test_kill_9_of_the_primary(
    private_sentinel_group_each_transport: SentinelGroup, key_prefix: str, receive: Receive
) -> None:
    group = private_sentinel_group_each_transport
    layer, alone, grouped = await _setup(group, key_prefix)
    try:
        killed_at = time.monotonic()
        old = await asyncio.to_thread(group.kill_primary)
        assert await receive(layer, alone) == {"type": "layer.down"}
        assert await receive(layer, grouped) == {"type": "layer.down"}
        new = await asyncio.to_thread(group.wait_for_new_primary, old, 20)
        failover = time.monotonic() - killed_at
        assert await receive(layer, alone, 20) == {"type": "layer.up"}
        assert await receive(layer, grouped, 20) == {"type": "layer.up"}
        took = await _round_trip_on(layer, new, alone, grouped, killed_at, failover + 1.0)
        transport = await asyncio.to_thread(group.check_transport, old, new)
        print(
            f"\nkill -9 ({group.transport}): failover {failover:.2f}s, working on the new primary after "
            f"{took:.2f}s; {transport}"
        )
        assert took < failover + 1.0
    finally:
        await layer.close_pools()
