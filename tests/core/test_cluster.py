"""The core layer on a Valkey Cluster under faults: a primary killed and a slot migrated while messages flow.

Every message whose send was acknowledged is received once; the figures (write gap, acked, uncertain, lost,
duplicated) are printed. The conformance suite covers the cluster in normal operation.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import valkey

from channels_valkey.core import ValkeyChannelLayer

from servers.cluster import ValkeyCluster
from servers.process import wait_until

pytestmark = pytest.mark.slow


@dataclass
class Stream:
    """One sender and one receiver on a channel, and what each saw."""

    layer: ValkeyChannelLayer
    channel: str
    acked: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            try:
                await self.layer.send(self.channel, {"type": "n", "n": n})
            except (valkey.ConnectionError, valkey.TimeoutError):
                self.uncertain.append(n)  # the reply was lost: it may or may not have been stored
            else:
                self.acked.append(n)
                self.ack_times.append(time.monotonic())
            if n % 10 == 0:
                await asyncio.sleep(0.001)

    async def receive(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), 1)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                if self.stop.is_set():
                    return
                continue
            self.received.append(message["n"])

    def longest_gap_after(self, moment: float) -> float:
        gaps = [later - earlier for earlier, later in itertools.pairwise(self.ack_times) if later >= moment]
        return max(gaps, default=0.0)

    def report(self, what: str) -> tuple[set[int], int]:
        lost = set(self.acked) - set(self.received)
        duplicated = len(self.received) - len(set(self.received))
        print(
            f"\n{what}: acked {len(self.acked)}, uncertain {len(self.uncertain)}, received {len(self.received)}, "
            f"lost {len(lost)}, duplicated {duplicated}"
        )
        return lost, duplicated


async def _through(stream: Stream, fault: Callable[[], Coroutine[Any, Any, float]]) -> float:
    """Run the stream, apply ``fault`` once 300 messages arrived, wait for 300 more; what ``fault`` returned."""
    tasks = [asyncio.create_task(stream.send()), asyncio.create_task(stream.receive())]
    try:
        await asyncio.to_thread(
            wait_until, lambda: len(stream.received) >= 300, timeout=15, message="messages to flow"
        )
        figure = await fault()
        count = len(stream.received)
        await asyncio.to_thread(
            wait_until, lambda: len(stream.received) >= count + 300, timeout=15, message="messages again"
        )
    finally:
        stream.stop.set()
        await asyncio.gather(*tasks)
        await stream.layer.flush()
        await stream.layer.close_pools()
    return figure


async def test_kill_9_of_a_primary_loses_nothing_acknowledged(
    private_cluster: ValkeyCluster, key_prefix: str
) -> None:
    cluster = private_cluster
    layer = ValkeyChannelLayer(hosts=[{"cluster": [cluster.url()]}], prefix=key_prefix, capacity=100_000)
    stream = Stream(layer, "stream")
    killed_at = 0.0

    async def kill() -> float:
        nonlocal killed_at
        killed = await asyncio.to_thread(cluster.kill_primary_of, layer.queue_key("stream"))
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_for_failover, killed, 20)
        return time.monotonic() - killed_at

    failover = await _through(stream, kill)
    gap = stream.longest_gap_after(killed_at)
    lost, duplicated = stream.report(
        f"CLUSTER kill -9: replica serving after {failover:.2f}s, longest write gap {gap:.2f}s"
    )
    # At most the message a pop had on the wire when the primary died: the pop ran (and reached the replica), its
    # reply did not (docs/architecture.md, "Delivery guarantees"; about 1 run in 8 here). A write acknowledged
    # before the kill but not yet replicated would be a second way, which Valkey's asynchronous replication allows.
    assert len(lost) <= 1
    assert duplicated == 0
    assert gap <= cluster.node_timeout_ms / 1000 + 3.0  # the bound the issue sets for writes to resume


async def test_a_slot_migrated_under_load_loses_nothing(
    private_cluster: ValkeyCluster, key_prefix: str
) -> None:
    """The stream's slot moves to another primary (keys first, then the slot, with a second in between during
    which new keys are redirected with ASK); sends and receives follow it."""
    cluster = private_cluster
    layer = ValkeyChannelLayer(hosts=[{"cluster": [cluster.url()]}], prefix=key_prefix, capacity=100_000)
    stream = Stream(layer, "stream")
    key = layer.queue_key("stream")

    async def migrate() -> float:
        slot = await asyncio.to_thread(cluster.key_slot, key)
        source = await asyncio.to_thread(cluster.primary_for, key)
        target = next(node for node in await asyncio.to_thread(cluster.primaries) if node is not source)
        started = time.monotonic()
        await asyncio.to_thread(cluster.migrate_slot, slot, target, hold=1.0)
        moved = await asyncio.to_thread(cluster.primary_for, key)
        assert moved is target
        return time.monotonic() - started

    took = await _through(stream, migrate)
    lost, duplicated = stream.report(f"CLUSTER slot migration ({took:.2f}s)")
    assert not lost
    assert duplicated == 0


@pytest.mark.parametrize("prefix", ["asgi{", "a}sgi", "{tag}"])
def test_a_prefix_with_braces_is_refused_on_a_cluster(prefix: str) -> None:
    """On a cluster the layer wraps names in braces (hash tags); braces in the prefix would move the tag."""
    with pytest.raises(ValueError, match=re.escape(repr(prefix))):
        ValkeyChannelLayer(hosts=[{"cluster": [("127.0.0.1", 7000)]}], prefix=prefix)
    ValkeyChannelLayer(hosts=["valkey://127.0.0.1:7000"], prefix=prefix)  # elsewhere braces are plain text
