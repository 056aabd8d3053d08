"""A stream of messages through the core layer while the Sentinel-managed primary is killed: every message whose
send was acknowledged is received, once, but the last one acknowledged before the kill, which Valkey's asynchronous
replication may not have passed to the replica; in plaintext and through TLS."""

from __future__ import annotations

import asyncio
import time

import pytest
import valkey
from acked_writes import AckedWrites

from channels_valkey.core import ValkeyChannelLayer

from servers.process import wait_until
from servers.topologies import SentinelGroup

pytestmark = pytest.mark.slow


async def test_kill_9_during_a_stream_loses_nothing_acknowledged(
    private_sentinel_group_each_transport: SentinelGroup, key_prefix: str
) -> None:
    group = private_sentinel_group_each_transport
    layer = ValkeyChannelLayer(hosts=[group.host_entry()], prefix=key_prefix, capacity=100_000)
    writes = AckedWrites()
    received: list[int] = []
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        while not stop.is_set():
            await writes.write(
                n, layer.send("stream", {"type": "n", "n": n}), (valkey.ConnectionError, valkey.TimeoutError)
            )
            n += 1
            if n % 10 == 0:
                await asyncio.sleep(0.001)

    async def receive() -> None:
        while True:
            try:
                message = await asyncio.wait_for(layer.receive("stream"), 1)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                if stop.is_set():
                    return
                continue
            received.append(message["n"])

    sender, receiver = asyncio.create_task(send()), asyncio.create_task(receive())
    try:
        await asyncio.to_thread(
            wait_until, lambda: len(received) >= 300, timeout=15, message="messages to flow"
        )
        old = await asyncio.to_thread(group.kill_primary)
        killed = time.monotonic()
        new = await asyncio.to_thread(group.wait_for_new_primary, old, 20)
        count = len(received)
        await asyncio.to_thread(
            wait_until, lambda: len(received) >= count + 300, timeout=15, message="messages again"
        )
        resumed = time.monotonic() - killed
    finally:
        stop.set()
        await sender
        await receiver
        await layer.flush()
        await layer.close_pools()
    transport = await asyncio.to_thread(group.check_transport, old, new)
    lost = set(writes.acked) - set(received)
    duplicated = len(received) - len(set(received))
    print(
        f"\nkill -9 under a stream ({group.transport}): acked {len(writes.acked)}, uncertain {len(writes.uncertain)}, "
        f"received {len(received)}, lost {len(lost)}, duplicated {duplicated}, flowing again after "
        f"{resumed:.2f}s; {transport}"
    )
    # Valkey replicates asynchronously: the last send the old primary acknowledged may not have reached the replica
    # when it died (once in a loaded run here). Nothing else may miss.
    assert lost <= writes.maybe_unreplicated(killed)
    assert len(lost) <= 1
    assert duplicated == 0
