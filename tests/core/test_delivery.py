"""Delivery guarantees the peers break: cancelled receives lose and duplicate nothing, readers of one channel get
distinct messages, sharded process channels arrive, sync callers neither leak nor re-deliver, bad entries are
skipped."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from asgiref.sync import async_to_sync

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.sentinel import ReplyLost

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess, wait_until
from servers.topologies import Shards

Eventually = Callable[..., Awaitable[None]]
#: Most messages the cancellation storm's sender is ahead of its receiver.
STORM_LEAD = 20


@pytest.fixture
async def layer(valkey_server: ValkeyProcess, key_prefix: str) -> AsyncIterator[ValkeyChannelLayer]:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    yield layer
    await layer.flush()
    await layer.close_pools()


async def _cancel_storm(
    layer: ValkeyChannelLayer, channel: str, cancels_wanted: int
) -> tuple[list[int], int, int]:
    """Receive numbered messages while cancelling receives at random moments, until ``cancels_wanted``
    cancellations happened; then stop the sender and drain. Returns (received in order, sent, cancellations).

    The sender stays at most STORM_LEAD messages ahead of what arrived, so a pop always finds a message to be cut
    short with. Left free, how far ahead it ran depended on the loop's timers: on uvloop's (whole milliseconds) it
    filled the channel to its capacity while few receives were cut short at all."""
    rng = random.Random(2024)
    received: list[int] = []
    cancels = 0
    sent = 0
    stop = asyncio.Event()
    room = asyncio.Semaphore(STORM_LEAD)

    async def send() -> None:
        nonlocal sent
        while not stop.is_set():
            await room.acquire()
            if stop.is_set():
                return
            await layer.send(channel, {"type": "n", "n": sent})
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.002)

    sender = asyncio.create_task(send())
    deadline = time.monotonic() + 120
    while cancels < cancels_wanted and time.monotonic() < deadline:
        task = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(rng.uniform(0, 0.0015))
        if not task.done():
            task.cancel()
        try:
            received.append((await asyncio.wait_for(task, 10))["n"])
            room.release()
        except asyncio.CancelledError:
            cancels += 1
    stop.set()
    room.release()  # a sender waiting for room sees the stop
    await sender
    while len(received) < sent:
        received.append((await asyncio.wait_for(layer.receive(channel), 10))["n"])
    return received, sent, cancels


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["normal", "process"])
async def test_ten_thousand_random_cancellations_lose_and_duplicate_nothing(
    fault_proxy: FaultProxy, key_prefix: str, kind: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix, capacity=100_000)
    channel = "storm" if kind == "normal" else await layer.new_channel()
    fault_proxy.set_latency(0.0005)
    try:
        received, sent, cancels = await _cancel_storm(layer, channel, cancels_wanted=10_000)
    finally:
        fault_proxy.set_latency(0)
        await layer.flush()
        await layer.close_pools()
    print(f"\n{kind}: {cancels} cancellations, {sent} sent, {len(received)} received")
    assert cancels >= 10_000
    assert sorted(received) == list(range(sent)), "lost or duplicated messages"
    assert received == sorted(received), "order changed after a cancelled receive"


async def _send_numbered(layer: ValkeyChannelLayer, channel: str, total: int, pace: int = 50) -> None:
    for n in range(total):
        await layer.send(channel, {"type": "n", "n": n})
        if n % pace == 0:
            await asyncio.sleep(0.001)


async def test_several_processes_reading_one_channel_get_distinct_messages(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    layers = [
        ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix, capacity=1000) for _ in range(3)
    ]
    total = 300
    seen: list[list[int]] = [[] for _ in layers]
    stop = asyncio.Event()

    async def read(index: int) -> None:
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(layers[index].receive("work"), 0.5)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                continue
            seen[index].append(message["n"])
            if sum(map(len, seen)) >= total:
                stop.set()

    readers = [asyncio.create_task(read(index)) for index in range(len(layers))]
    await _send_numbered(layers[0], "work", total)
    await asyncio.wait_for(stop.wait(), 30)
    await asyncio.gather(*readers)
    for layer in layers:
        await layer.close_pools()
    everything = [n for part in seen for n in part]
    assert sorted(everything) == list(range(total))
    assert sum(1 for part in seen if part) >= 2  # the work really was shared


async def test_sharded_process_channels_all_arrive(valkey_shards: Shards, key_prefix: str) -> None:
    layer = ValkeyChannelLayer(hosts=valkey_shards.urls(), prefix=key_prefix)
    try:
        channels = [await layer.new_channel(prefix=f"p{index}") for index in range(30)]
        for index, channel in enumerate(channels):
            await layer.send(channel, {"type": "direct", "i": index})
        for index, channel in enumerate(channels):
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "direct", "i": index}
        # The names really were spread over the shards.
        assert len({layer.consistent_hash(channel.split("!")[0] + "!") for channel in channels}) == 3
    finally:
        await layer.flush()
        await layer.close_pools()


def test_repeated_async_to_sync_receive_and_group_send_neither_leak_nor_redeliver(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    layer = ValkeyChannelLayer(hosts=[server.url()], prefix=key_prefix)
    for n in range(20):
        async_to_sync(layer.send)("sync-chan", {"type": "n", "n": n})
    got = [async_to_sync(layer.receive)("sync-chan")["n"] for _ in range(20)]
    assert got == list(range(20))
    async_to_sync(layer.group_add)("sync-group", "sync-member")
    for n in range(20):
        async_to_sync(layer.group_send)("sync-group", {"type": "g", "n": n})
    got = [async_to_sync(layer.receive)("sync-member")["n"] for _ in range(20)]
    assert got == list(range(20))
    with server.client() as client:
        assert client.zcard(f"{key_prefix}sync-chan") == 0
        assert client.zcard(f"{key_prefix}sync-member") == 0
    # What is open is what waits in the park for the next call (parking.py) and the connection of the layer's own
    # loop, which the sends were handed to (call_loops.py); close_pools() from a call's loop closes both.
    shard = layer.stats()["shards"]["0"]
    assert server.connected_clients() == shard["parked_connections"] + shard["open_connections"]
    assert shard["parked_connections"] <= 2
    assert shard["open_connections"] == 1
    async_to_sync(layer.close_pools)()
    wait_until(lambda: server.connected_clients() == 0, timeout=5, message="every connection to be closed")


def test_one_layer_receiving_on_several_event_loops_at_once(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        async def work() -> list[int]:
            channel = f"loop{number}"
            for n in range(10):
                await layer.send(channel, {"type": "n", "n": n})
            return [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(10)]

        try:
            results[number] = asyncio.run(work())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert results == {number: list(range(10)) for number in range(4)}


async def test_foreign_and_truncated_entries_are_skipped_and_counted(
    layer: ValkeyChannelLayer, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    key = f"{key_prefix}mixed"
    with valkey_server.client() as client:
        now = time.time()
        client.zadd(key, {b"not a message at all": now - 2, b"\x00" * 5: now - 1})
    await layer.send("mixed", {"type": "good"})
    assert await asyncio.wait_for(layer.receive("mixed"), 5) == {"type": "good"}
    assert layer.counters.undecodable == 2


async def test_buffers_of_channels_nobody_receives_from_expire(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix, expiry=1)
    try:
        forgotten, alive = await layer.new_channel(), await layer.new_channel()
        await layer.send(forgotten, {"type": "never read"})
        await layer.send(alive, {"type": "read"})
        assert await asyncio.wait_for(layer.receive(alive), 5) == {"type": "read"}
        with valkey_server.client() as client:  # the forgotten channel's message came along and waits locally
            assert client.zcard(layer.queue_key(forgotten)) == 0
        assert layer.counters.expired == 0
        # Time passing is the condition here: the buffered message must outlive expiry.
        await asyncio.sleep(1.2)
        await layer.send(alive, {"type": "read again"})
        assert await asyncio.wait_for(layer.receive(alive), 5) == {"type": "read again"}
        # Dropped by the sweep that receiving on the process queue runs, without anyone receiving from it.
        assert layer.counters.expired == 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(forgotten), 0.5)
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_buffers_of_channels_nobody_receives_from_expire_when_nothing_else_arrives(
    valkey_server: ValkeyProcess, key_prefix: str, eventually: Eventually
) -> None:
    """A process whose consumers have all gone quiet (no receive, no message) still drops what it buffered for a
    channel nobody receives from, once it is older than expiry: found by the soak (tests/faults/test_soak.py),
    where such messages stayed until the next message arrived."""
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix, expiry=1)
    try:
        forgotten, alive = await layer.new_channel(), await layer.new_channel()
        await layer.send(forgotten, {"type": "never read"})
        await layer.send(alive, {"type": "read"})
        assert await asyncio.wait_for(layer.receive(alive), 5) == {"type": "read"}
        assert layer.stats()["held"]["process"] == 1  # the forgotten channel's message came along
        await eventually(lambda: layer.stats()["held"]["process"] == 0, "the buffered message to expire")
        assert layer.counters.expired == 1
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_receive_survives_a_cut_connection(
    fault_proxy: FaultProxy, valkey_server: ValkeyProcess, key_prefix: str, eventually: Eventually
) -> None:
    waiting_before = valkey_server.receives_waiting()
    layer = ValkeyChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix)
    try:
        await layer.send("c", {"type": "first"})
        assert await asyncio.wait_for(layer.receive("c"), 5) == {"type": "first"}
        waiting = asyncio.create_task(layer.receive("c"))
        # The command lane and the receive's reader go through the proxy, and the reader waits on the server.
        await fault_proxy.wait_for_connections_async(2, timeout=5)
        await eventually(
            lambda: valkey_server.receives_waiting() > waiting_before,
            "the receive's reader to wait on the server",
        )
        fault_proxy.cut()
        await layer.send("c", {"type": "after the cut"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "after the cut"}
    finally:
        await layer.flush()
        await layer.close_pools()


async def _use_channels_once(layer: ValkeyChannelLayer, start: int, count: int) -> None:
    for index in range(start, start + count):
        channel = f"once-{index}"
        await layer.send(channel, {"type": "n", "n": index})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "n", "n": index}
        process_channel = await layer.new_channel(prefix=f"once{index}")
        await layer.send(process_channel, {"type": "n", "n": index})
        assert await asyncio.wait_for(layer.receive(process_channel), 5) == {"type": "n", "n": index}


def _receiver_memory(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by the core layer's receiving code (what it keeps per channel, if anything)."""
    traces = snapshot.filter_traces(
        [tracemalloc.Filter(True, "*channels_valkey/core/receiver.py"), tracemalloc.Filter(True, "*inbox.py")]
    )
    return sum(stat.size for stat in traces.statistics("filename"))


async def test_channels_used_once_leave_nothing_behind_in_the_receiver(
    layer: ValkeyChannelLayer, eventually: Eventually
) -> None:
    """A process that uses many channel names once (a consumer per connection) keeps no reader task and no
    memory for them once they are done."""
    # The connections and their own tasks, which stay: the command lane's, and the readers' tracking lane's.
    await layer.send("warm-up", {"type": "n"})
    assert await asyncio.wait_for(layer.receive("warm-up"), 5) == {"type": "n"}

    def no_reader() -> bool:
        return not any(
            task.get_name().startswith("channels-valkey queue reader") for task in asyncio.all_tasks()
        )

    await eventually(no_reader, "the warm-up's reader task to end")
    baseline = asyncio.all_tasks()

    def idle() -> bool:
        return asyncio.all_tasks() == baseline

    await _use_channels_once(layer, 0, 100)  # warm-up: scripts, caches
    await eventually(idle, "every reader task to end")
    tracemalloc.start()
    try:
        gc.collect()
        before = _receiver_memory(tracemalloc.take_snapshot())
        await _use_channels_once(layer, 100, 400)
        await eventually(idle, "every reader task to end")
        gc.collect()  # what is kept, not garbage waiting for the cycle collector
        growth = _receiver_memory(tracemalloc.take_snapshot()) - before
    finally:
        tracemalloc.stop()
    # Something kept per channel (a queue record, a buffer) would be 400 of them: tens of kilobytes at least.
    assert growth < 16_384, f"the receiving code kept {growth} bytes after 400 more channels were used once"


async def test_a_send_whose_reply_was_lost_raises_instead_of_queueing_a_second_copy(
    fault_proxy: FaultProxy, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The send reaches the server and a receiver takes the message before the reply is lost: retrying the send
    would queue it again (the first copy is gone, so the script cannot tell), so the sender gets the error."""
    sender = ValkeyChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix)
    receiver = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    try:
        await sender.send("work", {"type": "warm up"})
        assert await asyncio.wait_for(receiver.receive("work"), 5) == {"type": "warm up"}
        fault_proxy.set_latency(0.5)
        sending = asyncio.create_task(sender.send("work", {"type": "once"}))
        # The server has run the send: the receiver got it while the reply is still held in the proxy.
        assert await asyncio.wait_for(receiver.receive("work"), 5) == {"type": "once"}
        assert not sending.done()
        fault_proxy.cut()
        fault_proxy.set_latency(0)
        with pytest.raises(
            ReplyLost,
            match=r"send to .work.: the connection failed after the message was written .* may have been delivered",
        ):
            await asyncio.wait_for(sending, 10)
        await sender.send("work", {"type": "next"})
        assert await asyncio.wait_for(receiver.receive("work"), 5) == {"type": "next"}
    finally:
        await sender.flush()
        await sender.close_pools()
        await receiver.close_pools()
