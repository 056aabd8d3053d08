"""One layer instance used from event loops that come and go, as Django views and Celery tasks use it: each sync
call runs ``async_to_sync(..., force_new_loop=True)``, a brand-new loop in another thread closed when the call
returns. Every call must return at once with a plain host and behind Sentinel alike; a closing loop's Sentinel
watcher once lost its cancellation within a few such calls and the call never returned, so each test repeats the
pattern about a hundred times."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer

from conftest import WAIT_TIMEOUT

pytestmark = pytest.mark.parametrize("topology", ["single", "sentinel"], indirect=True)

#: Sync calls per test, each on a loop of its own.
CALLS = 100


async def test_sync_sends_reach_a_layer_receiving_on_its_own_loop(
    layer: ValkeyChannelLayer,
    on_fresh_loop: Callable[..., Any],
    receive: Callable[..., Any],
) -> None:
    channel = await layer.new_channel()

    def send_all() -> None:
        for n in range(CALLS):
            on_fresh_loop(layer.send, channel, {"type": "sync.send", "n": n})

    async def receive_all() -> list[int]:
        # Patient, so that a send that never returns is what fails the test.
        return [(await receive(layer, channel, 3 * WAIT_TIMEOUT))["n"] for _ in range(CALLS)]

    got, _ = await asyncio.gather(receive_all(), asyncio.to_thread(send_all))
    assert got == list(range(CALLS))


def test_sync_sends_between_receives_on_a_paused_loop(
    layer: ValkeyChannelLayer, on_fresh_loop: Callable[..., Any]
) -> None:
    """channels-valkey 0.3's ``test_multi_send_receive_sync``, repeated: the receiving loop runs only while the test
    waits on it, as ``loop.run_until_complete`` runs it."""
    loop = asyncio.new_event_loop()
    try:
        channel = loop.run_until_complete(layer.new_channel())
        for round_ in range(CALLS // 3):
            for n in range(3):
                on_fresh_loop(layer.send, channel, {"type": "sync.send", "n": [round_, n]})
            got = [
                loop.run_until_complete(asyncio.wait_for(layer.receive(channel), WAIT_TIMEOUT))["n"]
                for _ in range(3)
            ]
            assert got == [[round_, n] for n in range(3)]
        loop.run_until_complete(layer.close_pools())
    finally:
        loop.close()


def test_sync_sends_and_receives_each_on_a_fresh_loop(
    layer: ValkeyChannelLayer, on_fresh_loop: Callable[..., Any]
) -> None:
    channel = on_fresh_loop(layer.new_channel)
    for n in range(CALLS // 2):
        on_fresh_loop(layer.send, channel, {"type": "sync.send", "n": n})
        assert on_fresh_loop(layer.receive, channel)["n"] == n
