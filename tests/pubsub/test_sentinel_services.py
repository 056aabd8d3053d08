"""The Pub/Sub layer on a ``services: []`` Sentinel entry: a shard per primary the Sentinels monitor.

A process that only publishes must place names as the subscribing processes do, even before it has subscribed
to anything: here the publisher discovers its shards and the subscriber names the same primaries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.topologies import SentinelServices

pytestmark = pytest.mark.slow

Receive = Callable[..., Awaitable[dict[str, Any]]]


async def test_a_publisher_with_discovered_shards_reaches_subscribers_on_every_shard(
    sentinel_services: SentinelServices, key_prefix: str, receive: Receive
) -> None:
    publisher = ValkeyPubSubChannelLayer(hosts=[sentinel_services.entry([])], prefix=key_prefix)
    subscriber = ValkeyPubSubChannelLayer(
        hosts=[sentinel_services.entry(sentinel_services.names)], prefix=key_prefix
    )
    with pytest.raises(RuntimeError, match=r"'services: \[\]' Sentinel entry are not known yet"):
        publisher.consistent_hash("anything")
    try:
        channels = [await subscriber.new_channel() for _ in range(8)]
        groups = [f"group{index}" for index in range(8)]
        workers = [f"work.{index}" for index in range(8)]
        for group, channel in zip(groups, channels, strict=True):
            await subscriber.group_add(group, channel)
        # new_channel and group_add return once subscribed: Pub/Sub keeps nothing for a name nobody listens to.
        for channel in [*channels, *workers]:
            await publisher.send(channel, {"type": "direct", "to": channel})
        for group in groups:
            await publisher.group_send(group, {"type": "grouped", "to": group})

        names = [*channels, *workers, *(f"{key_prefix}__group__{group}" for group in groups)]
        assert {subscriber.consistent_hash(name) for name in names} == {0, 1}
        for name in names:
            assert publisher.consistent_hash(name) == subscriber.consistent_hash(name)

        for worker in workers:
            assert await receive(subscriber, worker) == {"type": "direct", "to": worker}
        for group, channel in zip(groups, channels, strict=True):
            received = [await receive(subscriber, channel), await receive(subscriber, channel)]
            assert sorted(received, key=lambda message: message["type"]) == [
                {"type": "direct", "to": channel},
                {"type": "grouped", "to": group},
            ]
    finally:
        await publisher.close_pools()
        await subscriber.close_pools()
