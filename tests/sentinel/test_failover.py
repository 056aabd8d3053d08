"""Sentinel failover under a running writer: nothing acknowledged is lost (after a kill -9, but the last write
acknowledged before it, which Valkey's asynchronous replication may not have passed to the replica), nothing is
duplicated, no connection stays on a demoted primary. The kill -9 test runs in plaintext and through TLS, with the
same bounds."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import valkey
from acked_writes import AckedWrites

from channels_valkey.sentinel import ConnectionManager, decode_hosts

from conftest import FOLLOWER_THREAD
from servers.process import wait_until
from servers.topologies import SentinelGroup

pytestmark = pytest.mark.slow

#: The thread on which the process follows each Sentinel service (follower.py).


async def _write_until(manager: ConnectionManager, key: str, stop: asyncio.Event, log: AckedWrites) -> None:
    """RPUSH 0, 1, 2, ... until told to stop. RPUSH is not idempotent: only refused commands are retried."""
    value = 0
    while not stop.is_set():
        write = manager.execute(0, lambda client, v=value: client.rpush(key, v), idempotent=False)
        await log.write(value, write, (valkey.ConnectionError, valkey.TimeoutError))
        value += 1


async def _stored_values(group: SentinelGroup, key: str) -> list[int]:
    primary = await asyncio.to_thread(group.current_primary)
    with primary.client() as client:
        return [int(v) for v in client.lrange(key, 0, -1)]


async def _write_through(
    group: SentinelGroup, key: str, fault: str
) -> tuple[AckedWrites, list[int], float, float, float]:
    """The writer's log, the values stored at the end, and the moments the fault started and was done (the killed
    primary is dead), and how long the switch took."""
    manager = ConnectionManager(decode_hosts([group.host_entry()]))
    stop = asyncio.Event()
    log = AckedWrites()
    writer = asyncio.create_task(_write_until(manager, key, stop, log))
    try:
        await asyncio.to_thread(
            wait_until, lambda: len(log.acked) >= 500, timeout=10, message="writes to flow"
        )
        old = await asyncio.to_thread(group.current_primary)
        started = time.monotonic()
        if fault == "kill":
            await asyncio.to_thread(group.kill_node, old)
        else:
            await asyncio.to_thread(group.failover)
        faulted = time.monotonic()
        await asyncio.to_thread(group.wait_for_new_primary, old, 20)
        switched = time.monotonic()
        acked_at_switch = len(log.acked)
        await asyncio.to_thread(
            wait_until,
            lambda: len(log.acked) >= acked_at_switch + 500,
            timeout=10,
            message="writes to resume",
        )
        # The move is counted once for the process (stats() and the failovers metric read this), when the
        # Sentinels announce it, which may come after the writes resumed on the replica being promoted.
        await asyncio.to_thread(
            wait_until,
            lambda: manager.shard_counts(0).failovers == 1,
            timeout=10,
            message="the failover count",
        )
        if fault == "kill":
            assert manager.shard_counts(0).reconnects >= 1
        # The new primary has another run_id, but at another address: a failover, not a restart.
        assert manager.shard_counts(0).restarts == 0
    finally:
        stop.set()
        await writer
        await manager.close()
    return log, await _stored_values(group, key), started, faulted, switched - started


async def test_kill_9_of_the_primary_loses_and_duplicates_nothing_acknowledged(
    private_sentinel_group_each_transport: SentinelGroup, key_prefix: str
) -> None:
    group = private_sentinel_group_each_transport
    old = await asyncio.to_thread(group.current_primary)
    log, stored, killed_at, dead_at, failover_time = await _write_through(group, f"{key_prefix}q", "kill")
    new = await asyncio.to_thread(group.current_primary)
    transport = await asyncio.to_thread(group.check_transport, old, new)
    gap = log.longest_gap_after(killed_at)
    lost = set(log.acked) - set(stored)
    duplicated = len(stored) - len(set(stored))
    print(
        f"\nkill -9 ({group.transport}): failover {failover_time:.2f}s, longest write gap {gap:.2f}s, "
        f"acked {len(log.acked)}, uncertain {len(log.uncertain)}, lost {len(lost)}, duplicated {duplicated}; "
        f"{transport}"
    )
    # Valkey replicates asynchronously: the last write the old primary acknowledged may not have reached the replica
    # when it died. Nothing else may miss.
    assert lost <= log.maybe_unreplicated(dead_at)
    assert len(lost) <= 1
    assert duplicated == 0
    assert set(stored) <= set(log.acked) | set(log.uncertain)
    assert gap <= failover_time + 1.0


async def test_graceful_failover_loses_at_most_a_second_and_moves_the_writer(
    private_sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    key = f"{key_prefix}q"
    log, stored, _, _, failover_time = await _write_through(private_sentinel_group, key, "failover")
    lost = sorted(set(log.acked) - set(stored))
    rate = len(log.acked) / (log.ack_times[-1] - log.ack_times[0])
    lost_seconds = len(lost) / rate
    print(
        f"\nSENTINEL FAILOVER: switch {failover_time:.2f}s, acked {len(log.acked)}, lost {len(lost)} "
        f"(~{lost_seconds:.3f}s of traffic at {rate:.0f} writes/s), uncertain {len(log.uncertain)}"
    )
    assert lost_seconds <= 1.0
    assert len(stored) == len(set(stored))
    # The writer ended up on the new primary: its last acknowledged writes are stored there.
    assert set(log.acked[-100:]) <= set(stored)


async def test_graceful_failover_moves_pub_sub_connections_too(
    private_sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    """A subscriber on the shard's client is dropped from the demoted primary and resubscribes on the new one."""
    group = private_sentinel_group
    manager = ConnectionManager(decode_hosts([group.host_entry()]))
    channel = f"{key_prefix}news"
    client = await manager.client(0)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        old = await asyncio.to_thread(group.current_primary)
        await asyncio.to_thread(group.failover)
        new = await asyncio.to_thread(group.wait_for_new_primary, old, 20)

        async def published_on_new_primary_arrives() -> bool:
            with new.client() as publisher:
                publisher.publish(channel, "after the switch")
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            except valkey.ConnectionError:
                return False  # dropped from the old primary; the next read reconnects and resubscribes
            return message is not None and message["data"] == b"after the switch"

        deadline = time.monotonic() + 5
        while not await published_on_new_primary_arrives():
            assert time.monotonic() < deadline, "the subscriber never reached the new primary"
        with new.client() as admin:
            assert admin.pubsub_numsub(channel) == [(channel.encode(), 1)]
    finally:
        await pubsub.aclose()
        await manager.close()


@pytest.mark.usefixtures("no_other_followers")
def test_a_failover_moves_every_event_loops_writer_through_the_one_follower(
    private_sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    """Two threads with long-lived loops of their own write through one manager. The process follows the Sentinels
    once (one follower thread), and its word of the promotion reaches both loops: each loses at most a second of
    writes, as the single loop of the graceful test does, and both end up on the new primary."""
    group = private_sentinel_group
    manager = ConnectionManager(decode_hosts([group.host_entry()]))
    keys = [f"{key_prefix}q{index}" for index in range(2)]
    logs = [AckedWrites(), AckedWrites()]
    stop = threading.Event()

    def write_on_a_loop_of_its_own(key: str, log: AckedWrites) -> None:
        async def write() -> None:
            done = asyncio.Event()
            writer = asyncio.create_task(_write_until(manager, key, done, log))
            await asyncio.to_thread(stop.wait)
            done.set()
            await writer
            await manager.close()

        asyncio.run(write())

    threads = [
        threading.Thread(target=write_on_a_loop_of_its_own, args=pair)
        for pair in zip(keys, logs, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(log.acked) >= 300 for log in logs), timeout=10, message="writes to flow")
        followers = [thread for thread in threading.enumerate() if thread.name == FOLLOWER_THREAD]
        assert len(followers) == 1
        old = group.current_primary()
        group.failover()
        new = group.wait_for_new_primary(old, 20)
        wait_until(
            lambda: manager.shard_counts(0).failovers == 1,
            timeout=10,
            message="the follower to count the switch",
        )
        after_switch = [len(log.acked) for log in logs]
        wait_until(
            lambda: all(len(log.acked) >= count + 300 for log, count in zip(logs, after_switch, strict=True)),
            timeout=10,
            message="both loops to write on the new primary",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert manager.shard_counts(0).failovers == 1
    for key, log in zip(keys, logs, strict=True):
        with new.client() as client:
            stored = [int(value) for value in client.lrange(key, 0, -1)]
        lost = sorted(set(log.acked) - set(stored))
        rate = len(log.acked) / (log.ack_times[-1] - log.ack_times[0])
        print(f"\n{key}: acked {len(log.acked)}, lost {len(lost)} (~{len(lost) / rate:.3f}s of writes)")
        assert len(lost) / rate <= 1.0
        assert len(stored) == len(set(stored))
        assert set(log.acked[-100:]) <= set(stored)
