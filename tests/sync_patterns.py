"""How sync code (Django views, Celery tasks, 0.3's own sync tests) drives a channel layer through short-lived event
loops: one scenario each, run by the core and the Pub/Sub layer's tests alike. ``on_fresh_loop`` is the fixture of
that name in conftest.py, ``receive`` the bounded receive fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conftest import WAIT_TIMEOUT

#: Sync calls per scenario, each on a loop of its own: the Sentinel watcher's lost cancellation showed within a
#: few calls, so about a hundred catch it every time.
CALLS = 100


async def sends_from_fresh_loops_reach_a_receiving_loop(
    layer: Any, on_fresh_loop: Callable[..., Any], receive: Callable[..., Any]
) -> None:
    """A consumer receives on its own loop while another thread sends, each send on a fresh loop."""
    channel = await layer.new_channel()

    def send_all() -> None:
        for n in range(CALLS):
            on_fresh_loop(layer.send, channel, {"type": "sync.send", "n": n})

    async def receive_all() -> list[int]:
        # Patient, so that a send that never returns is what fails the test.
        return [(await receive(layer, channel, 3 * WAIT_TIMEOUT))["n"] for _ in range(CALLS)]

    got, _ = await asyncio.gather(receive_all(), asyncio.to_thread(send_all))
    assert got == list(range(CALLS))


def sends_between_receives_on_a_paused_loop(layer: Any, on_fresh_loop: Callable[..., Any]) -> None:
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
