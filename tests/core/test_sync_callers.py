"""Sync code through ``async_to_sync``: every call on a new event loop, closed when the call returns.

A message that reached the process on one loop must be received on the next, whichever loop popped it, and
whether the loop ended with ``close_pools()`` or simply closed. These are the patterns of a Django view, a Celery
task or a management command (and of channels-valkey 0.3's own ``test_double_receive``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from channels_valkey.core import ValkeyChannelLayer

from conftest import call_on_fresh_loop

MakeLayer = Callable[..., ValkeyChannelLayer]
T = TypeVar("T")

#: Longest a receive may wait for a message that was sent: generous, so only a stranded message fails it.
RECEIVE_TIMEOUT = 10.0


def _caller(layer: ValkeyChannelLayer, *, close_pools: bool) -> Callable[..., Any]:
    """``call(coroutine_function, *args)``: one call on a fresh event loop (``async_to_sync(...,
    force_new_loop=True)``, bounded), ending with ``close_pools()`` if asked."""

    def call(function: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def one_call() -> T:
            try:
                return await asyncio.wait_for(function(*args), RECEIVE_TIMEOUT)
            finally:
                if close_pools:
                    await layer.close_pools()

        result: T = call_on_fresh_loop(one_call)
        return result

    return call


ENDINGS = pytest.mark.parametrize("close_pools", [True, False], ids=["close_pools", "loop_closes"])


@ENDINGS
def test_process_channels_received_each_in_its_own_call(make_layer: MakeLayer, close_pools: bool) -> None:
    layer = make_layer(capacity=3)
    call = _caller(layer, close_pools=close_pools)

    first, second = call(layer.new_channel), call(layer.new_channel)
    call(layer.send, first, {"type": "test.message.1"})
    call(layer.send, second, {"type": "test.message.2"})
    # The first receive drains the process's queue: the other channel's message must survive its loop.
    assert call(layer.receive, second) == {"type": "test.message.2"}
    assert call(layer.receive, first) == {"type": "test.message.1"}


@ENDINGS
def test_messages_sent_and_received_one_per_call_keep_their_order(
    make_layer: MakeLayer, close_pools: bool
) -> None:
    layer = make_layer()
    call = _caller(layer, close_pools=close_pools)

    channels = [call(layer.new_channel) for _ in range(3)]
    for n in range(5):
        for channel in channels:
            call(layer.send, channel, {"type": "n", "n": n})
    for n in range(5):
        for channel in reversed(channels):
            assert call(layer.receive, channel) == {"type": "n", "n": n}


@ENDINGS
def test_repeated_group_sends_received_one_per_call(make_layer: MakeLayer, close_pools: bool) -> None:
    layer = make_layer()
    call = _caller(layer, close_pools=close_pools)

    members = [call(layer.new_channel), call(layer.new_channel), "sync-callers.normal"]
    for member in members:
        call(layer.group_add, "sync-callers", member)
    for n in range(5):
        call(layer.group_send, "sync-callers", {"type": "g", "n": n})
    for n in range(5):
        for member in reversed(members):
            assert call(layer.receive, member) == {"type": "g", "n": n}


def test_two_long_lived_loops_receive_what_either_popped(make_layer: MakeLayer) -> None:
    """Two threads, each with its own loop, receive different channels of one process at the same time: each
    channel gets all of its messages, in order, whichever loop's reader took them off the shared queue."""
    layer = make_layer(capacity=1000)
    count = 200
    channels = [call_on_fresh_loop(layer.new_channel) for _ in range(2)]
    received: dict[str, list[int]] = {channel: [] for channel in channels}

    def consume(channel: str) -> None:
        async def loop() -> None:
            for _ in range(count):
                message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
                received[channel].append(message["n"])
            await layer.close_pools()

        asyncio.run(loop())

    consumers = [threading.Thread(target=consume, args=(channel,), daemon=True) for channel in channels]
    for consumer in consumers:
        consumer.start()

    async def produce() -> None:
        for n in range(count):
            for channel in channels:
                await layer.send(channel, {"type": "n", "n": n})

    call_on_fresh_loop(produce)
    for consumer in consumers:
        consumer.join(RECEIVE_TIMEOUT * 3)
        assert not consumer.is_alive(), "a consumer waits for a message another loop holds"
    assert received == {channel: list(range(count)) for channel in channels}
