"""An operator who gave the layer's user only what channels-valkey 0.3 documented for this layer (PUBLISH,
SUBSCRIBE, UNSUBSCRIBE) keeps everything 0.3 could do: the queue commands are refused, so worker channels fall
back to Pub/Sub (logged once), and refused PING health checks are turned off instead of failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import ResiliencePolicy

from servers.process import ValkeyProcess
from servers.topologies import add_acl_user

#: What channels-valkey 0.3 told operators its Pub/Sub layer needs.
DOCUMENTED_COMMANDS = ["publish", "subscribe", "unsubscribe"]

Eventually = Callable[..., Awaitable[None]]


def _subscribers(server: ValkeyProcess, name: str) -> int:
    with server.client() as client:
        return sum(count for _, count in client.pubsub_numsub(name))


async def test_a_user_limited_to_publish_and_subscribe_keeps_working(
    secured_valkey: ValkeyProcess, key_prefix: str, eventually: Eventually, caplog: pytest.LogCaptureFixture
) -> None:
    add_acl_user(
        secured_valkey, "legacy-pubsub", "pw", [f"&{key_prefix}*", *(f"+{c}" for c in DOCUMENTED_COMMANDS)]
    )
    host, port = secured_valkey.address
    # Health checks every 50 ms, so that the refused PING is met on every kind of connection.
    policy = ResiliencePolicy(health_check_interval=0.05)
    layer = ValkeyPubSubChannelLayer(
        hosts=[f"valkey://legacy-pubsub:pw@{host}:{port}"], prefix=key_prefix, policy=policy
    )
    caplog.set_level(logging.WARNING, logger="channels_valkey.pubsub")
    try:
        channel = await layer.new_channel()
        await asyncio.sleep(0.1)  # idle past the health-check interval: the next use PINGs first
        await layer.send(channel, {"type": "direct"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "direct"}
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "grouped"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "grouped"}
        await layer.group_discard("room", channel)

        # A worker channel, as in 0.3: the receiver subscribes, the sender publishes.
        worker = f"{key_prefix}jobs"
        receiving = asyncio.create_task(layer.receive(worker))
        await eventually(
            lambda: _subscribers(secured_valkey, worker) == 1, "the worker channel's subscription"
        )
        await layer.send(worker, {"type": "job"})
        assert await asyncio.wait_for(receiving, 5) == {"type": "job"}
        assert layer.pubsub_shards == {0}
        assert sum("refuses the worker queue commands" in r.message for r in caplog.records) == 1
        assert any("refuses PING" in r.message for r in caplog.records)

        # A cancelled receive keeps the subscription. A receive on a channel not yet subscribed here subscribes it
        # as it starts waiting, which the server shows.
        later = f"{key_prefix}later"
        waiting = asyncio.create_task(layer.receive(later))
        await eventually(lambda: _subscribers(secured_valkey, later) == 1, "the receive's subscription")
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert _subscribers(secured_valkey, later) == 1
        await layer.send(later, {"type": "kept"})
        assert await asyncio.wait_for(layer.receive(later), 5) == {"type": "kept"}
        await layer.flush()
        await eventually(lambda: _subscribers(secured_valkey, channel) == 0, "flush to unsubscribe")
    finally:
        await layer.close_pools()
