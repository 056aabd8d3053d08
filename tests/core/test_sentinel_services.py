"""The core layer on a ``services: []`` Sentinel entry: a shard per primary the Sentinels monitor.

The discovered shards must place every name as the named form (``services: [the same names, sorted]``) does, so
processes configured either way, and every process of a fleet, agree on where each queue and group lives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.sentinel import ShardRing

from servers.topologies import SentinelServices

pytestmark = pytest.mark.slow

Receive = Callable[..., Awaitable[dict[str, Any]]]


def _prefixed_keys(services: SentinelServices, prefix: str) -> list[list[bytes]]:
    """The keys under ``prefix`` on each shard's primary, in ring order."""
    found = []
    for primary in services.primaries():
        with primary.client() as client:
            found.append(list(client.scan_iter(match=f"{prefix}*")))
    return found


def _four_names_per_shard(stem: str) -> list[str]:
    """Four names the ring of two shards places on shard 0 and four on shard 1."""
    ring = ShardRing(2)
    placed: dict[int, list[str]] = {0: [], 1: []}
    for index in range(1000):
        name = f"{stem}{index}"
        placed[ring.index(name)].append(name)
    return placed[0][:4] + placed[1][:4]


async def _four_process_channels_per_shard(layer: ValkeyChannelLayer) -> list[str]:
    """New process channels of ``layer``, four placed on each of its two shards (their random part places them, so
    channel prefixes are tried until both shards have four)."""
    ring = ShardRing(2)
    placed: dict[int, list[str]] = {0: [], 1: []}
    for index in range(1000):
        channel = await layer.new_channel(f"process{index}")
        shard = ring.index(channel[: channel.index("!") + 1])
        placed[shard].append(channel)
        if len(placed[0]) >= 4 and len(placed[1]) >= 4:
            break
    return placed[0][:4] + placed[1][:4]


async def test_discovered_shards_place_names_as_the_named_services_do(
    sentinel_services: SentinelServices, key_prefix: str, receive: Receive
) -> None:
    discovered = ValkeyChannelLayer(hosts=[sentinel_services.entry([])], prefix=key_prefix)
    named = ValkeyChannelLayer(hosts=[sentinel_services.entry(sentinel_services.names)], prefix=key_prefix)
    with pytest.raises(RuntimeError, match=r"'services: \[\]' Sentinel entry are not known yet"):
        discovered.consistent_hash("anything")
    try:
        # Process channels of several processes (their "name!" part places them), groups, and normal channels
        # (sent to the shards in turn, received from all).
        process_channels = await _four_process_channels_per_shard(named)
        groups = _four_names_per_shard("group")
        normal_channels = [f"work.{index}" for index in range(4)]
        for group, channel in zip(groups, process_channels, strict=True):
            await named.group_add(group, channel)
        for channel in [*process_channels, *normal_channels]:
            await discovered.send(channel, {"type": "direct", "to": channel})
        for group in groups:
            await discovered.group_send(group, {"type": "grouped", "to": group})

        assert discovered.ring_size == 2
        for name in [*process_channels, *groups]:
            assert discovered.consistent_hash(name) == named.consistent_hash(name)
        # A process channel lives on the shard of its "name!" part.
        assert {named.consistent_hash(name[: name.index("!") + 1]) for name in process_channels} == {0, 1}
        assert {named.consistent_hash(name) for name in groups} == {0, 1}
        assert all(_prefixed_keys(sentinel_services, key_prefix)), "every shard holds queues or groups"

        for channel in normal_channels:
            assert await receive(named, channel) == {"type": "direct", "to": channel}
        for group, channel in zip(groups, process_channels, strict=True):
            received = [await receive(named, channel), await receive(named, channel)]
            assert sorted(received, key=lambda message: message["type"]) == [
                {"type": "direct", "to": channel},
                {"type": "grouped", "to": group},
            ]

        await discovered.flush()
        assert _prefixed_keys(sentinel_services, key_prefix) == [[], []]
    finally:
        await discovered.close_pools()
        await named.close_pools()
