"""One layer instance used from event loops that come and go, as Django views and Celery tasks use it: each sync
call runs ``async_to_sync(..., force_new_loop=True)``, a brand-new loop in another thread closed when the call
returns. Every call must return at once with a plain host and behind Sentinel alike; a closing loop's Sentinel
watcher once lost its cancellation within a few such calls and the call never returned, so each test repeats the
pattern about a hundred times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer

from sync_patterns import (
    CALLS,
    sends_between_receives_on_a_paused_loop,
    sends_from_fresh_loops_reach_a_receiving_loop,
)

pytestmark = pytest.mark.parametrize("topology", ["single", "sentinel"], indirect=True)


async def test_sync_sends_reach_a_layer_receiving_on_its_own_loop(
    layer: ValkeyChannelLayer, on_fresh_loop: Callable[..., Any], receive: Callable[..., Any]
) -> None:
    await sends_from_fresh_loops_reach_a_receiving_loop(layer, on_fresh_loop, receive)


def test_sync_sends_between_receives_on_a_paused_loop(
    layer: ValkeyChannelLayer, on_fresh_loop: Callable[..., Any]
) -> None:
    sends_between_receives_on_a_paused_loop(layer, on_fresh_loop)


def test_sync_sends_and_receives_each_on_a_fresh_loop(
    layer: ValkeyChannelLayer, on_fresh_loop: Callable[..., Any]
) -> None:
    channel = on_fresh_loop(layer.new_channel)
    for n in range(CALLS // 2):
        on_fresh_loop(layer.send, channel, {"type": "sync.send", "n": n})
        assert on_fresh_loop(layer.receive, channel)["n"] == n
