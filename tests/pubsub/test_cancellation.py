"""Cancelled receives: through a proxy that adds latency, thousands of receives are cancelled at random moments.

On a worker channel no message may be lost or delivered twice; on a process channel the subscription stays (the
peers unsubscribe a live consumer whose receive was cancelled, and its next messages are lost).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]


async def _receive_with_random_cancels(
    layer: ValkeyPubSubChannelLayer, channel: str, wanted: int, rng: random.Random
) -> tuple[list[int], int]:
    """Receive until ``wanted`` messages arrived, cancelling most receives after a random moment."""
    received: list[int] = []
    cancelled = 0
    while len(received) < wanted:
        task = asyncio.create_task(layer.receive(channel))
        if rng.random() < 0.8:
            done, _ = await asyncio.wait({task}, timeout=rng.uniform(0, 0.003))
            if not done:
                task.cancel()
                cancelled += 1
        try:
            message = await asyncio.wait_for(task, 15)
        except asyncio.CancelledError:
            continue
        received.append(message["n"])
    return received, cancelled


async def test_worker_channel_loses_and_duplicates_nothing_under_random_cancels(
    valkey_server: ValkeyProcess, fault_proxy: FaultProxy, key_prefix: str
) -> None:
    fault_proxy.set_latency(0.002)
    receiver = ValkeyPubSubChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix, capacity=100_000)
    sender = ValkeyPubSubChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix, capacity=100_000)
    count = 1000
    try:
        for n in range(count):
            await sender.send("jobs", {"type": "job", "n": n})
        received, cancelled = await _receive_with_random_cancels(receiver, "jobs", count, random.Random(6))
        assert cancelled >= 1000, "the test should really cancel receives"
        assert len(received) == len(set(received)), "a message was delivered twice"
        assert sorted(received) == list(range(count))
        with valkey_server.client() as client:
            assert client.zcard(f"{key_prefix}__worker__jobs") == 0
    finally:
        await receiver.flush()
        await receiver.close_pools()
        await sender.close_pools()


async def test_process_channel_keeps_its_subscription_through_cancelled_receives(
    valkey_server: ValkeyProcess, fault_proxy: FaultProxy, key_prefix: str, eventually: Eventually
) -> None:
    fault_proxy.set_latency(0.001)
    layer = ValkeyPubSubChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix, capacity=100_000)
    try:
        channel = await layer.new_channel()
        rng = random.Random(7)
        sent = 0

        async def send_some() -> None:
            nonlocal sent
            for n in range(500):
                await layer.send(channel, {"type": "n", "n": n})
                sent += 1
                if n % 20 == 0:
                    await asyncio.sleep(0.002)

        sending = asyncio.create_task(send_some())
        received, cancelled = await _receive_with_random_cancels(layer, channel, 500, rng)
        await sending
        assert cancelled >= 200, "the test should really cancel receives"
        assert received == list(range(500)), "messages were lost, duplicated or reordered"
        with valkey_server.client() as client:
            assert dict(client.pubsub_numsub(channel)) == {channel.encode(): 1}
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("delay", [0.0, 0.0005])
async def test_a_message_handed_to_a_cancelled_receive_goes_to_the_next_one(
    valkey_server: ValkeyProcess, key_prefix: str, delay: float
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    try:
        channel = await layer.new_channel()
        for n in range(200):
            first = asyncio.create_task(layer.receive(channel))
            await asyncio.sleep(0)
            await layer.send(channel, {"type": "n", "n": n})
            await asyncio.sleep(delay)
            first.cancel()
            try:
                message = await first
            except asyncio.CancelledError:
                message = await asyncio.wait_for(layer.receive(channel), 5)
            assert message["n"] == n
    finally:
        await layer.close_pools()
