"""send, receive and group_send of the Pub/Sub layer, ours side by side with channels_redis 4 (issue #6's targets).

Run: ``hatch run bench:run benchmarks/pubsub``. Every test runs once per side, on the session's Valkey server, in
this one process, each side under its own prefix; the ratio table at the end of the run comes from conftest.py.
Figures are wall time per round unless a test says otherwise; the server runs in another process, so
``time.process_time()`` is the client's CPU alone. ``PUBSUB_CHURN_CONSUMERS`` scales the churn (consumers
measured after the warm-up; default 10,000, the issue's figure; about 25 s per side here).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.cli.measure.flows import (
    GROUP,
    fan_out,
    produce_and_consume,
    round_trip,
    send_receive_pairs,
)

from servers.process import ValkeyProcess

CHANNEL = "bench.queue"
#: What listen() sends to a normal channel until this process receives from it, and the marker it ends with.
PROBE = {"type": "bench.probe"}
READY = {"type": "bench.ready"}
LISTEN_TIMEOUT = 10.0

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 10
ROUND_TRIPS = 1000
FAN_OUT_ROUNDS = 30

#: Consumers measured by the churn, after the warm-up.
CHURN_CONSUMERS = int(os.environ.get("PUBSUB_CHURN_CONSUMERS", "10000"))
#: Consumers that connect together, share one group message, and leave together: a burst of page loads.
CHURN_WAVE = 100
#: Consumers that come and go before the memory baseline is taken: connections and caches reach their size first.
CHURN_WARMUP = max(2 * CHURN_WAVE, CHURN_CONSUMERS // 10)
#: ``expiry`` of the churn's layers: ours unsubscribes a process channel nobody received from for this long.
CHURN_EXPIRY = 2
#: Longest wait for the server's Pub/Sub channels to return to their count before the churn.
CHANNELS_SETTLE_TIMEOUT = 10 * CHURN_EXPIRY

Run = Callable[..., Any]
Record = Callable[[str, float], None]


def round_times(benchmark: Any) -> list[float] | None:
    """The seconds each timed round took, or None when benchmarks are disabled (nothing to compare then)."""
    metadata = getattr(benchmark, "stats", None)
    if not metadata:
        return None
    return list(metadata.stats.data)


# The work, one function per benchmark (a profiler can call the same ones) -----------------------------------------


async def listen(layer: Any, channel: str) -> None:
    """Return once a message sent to the normal ``channel`` reaches this process's receive().

    The peer subscribes to a normal channel on its first receive and drops what was published before; ours keeps
    normal channels on a queue. A receiver takes probes until one arrives, then a last marker: what was sent
    before the marker has been taken, so the benchmark starts on an empty channel on both sides.
    """
    probed = asyncio.Event()

    async def take_until_ready() -> None:
        while (message := await layer.receive(channel)) != READY:
            if message != PROBE:
                raise AssertionError(f"{channel!r} delivered {message!r} while only probes were sent")
            probed.set()

    receiver = asyncio.ensure_future(take_until_ready())
    arrived = asyncio.ensure_future(probed.wait())
    deadline = time.monotonic() + LISTEN_TIMEOUT
    try:
        while not arrived.done():
            if receiver.done():
                receiver.result()  # raises what went wrong in the receiver
            if time.monotonic() > deadline:
                raise AssertionError(f"no probe sent to {channel!r} came back within {LISTEN_TIMEOUT} s")
            await layer.send(channel, PROBE)
            await asyncio.wait([arrived], timeout=0.05)
        await layer.send(channel, READY)
        await asyncio.wait_for(receiver, timeout=LISTEN_TIMEOUT)
    finally:
        arrived.cancel()
        receiver.cancel()


# 1. send+receive throughput ----------------------------------------------------------------------------------------


async def open_channel(layer: Any, kind: str) -> str:
    """A channel of ``kind`` ready to receive: a new process channel, or the normal CHANNEL listened to."""
    if kind == "process":
        return str(await layer.new_channel())
    await listen(layer, CHANNEL)
    return CHANNEL


@pytest.mark.benchmark(group="1 send+receive sequential")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_send_receive_sequential(benchmark: Any, run: Run, layer: Any, record: Record, kind: str) -> None:
    channel = run(open_channel(layer, kind))
    intact = benchmark.pedantic(
        lambda: run(send_receive_pairs(layer, channel, SEQUENTIAL_PAIRS)),
        rounds=THROUGHPUT_ROUNDS,
        warmup_rounds=1,
    )
    assert intact == SEQUENTIAL_PAIRS
    times = round_times(benchmark)
    if times is not None:
        row = (
            "1a send+receive process sequential" if kind == "process" else "1c send+receive normal sequential"
        )
        record(row, SEQUENTIAL_PAIRS / statistics.median(times))


# 1b, 1d and 4: the concurrent flow, timed in wall time and (process channels) in the client's CPU time.
@pytest.mark.benchmark(group="1 send+receive concurrent")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_send_receive_concurrent(benchmark: Any, run: Run, layer: Any, record: Record, kind: str) -> None:
    channel = run(open_channel(layer, kind))
    cpu: list[float] = []

    def flow() -> int:
        start = time.process_time()
        intact = run(produce_and_consume(layer, channel, CONCURRENT_MESSAGES))
        cpu.append(time.process_time() - start)
        return int(intact)

    intact = benchmark.pedantic(flow, rounds=THROUGHPUT_ROUNDS, warmup_rounds=1)
    assert intact == CONCURRENT_MESSAGES
    times = round_times(benchmark)
    if times is not None:
        if kind == "process":
            record("1b send+receive process concurrent", CONCURRENT_MESSAGES / statistics.median(times))
            cpu_per_message = statistics.median(cpu[-THROUGHPUT_ROUNDS:]) / CONCURRENT_MESSAGES
            record("4 client CPU per message", cpu_per_message * 1e6)
        else:
            record("1d send+receive normal concurrent", CONCURRENT_MESSAGES / statistics.median(times))


# 2. process-channel round trip ------------------------------------------------------------------------------------


# Latency is timed inside the event loop (round_trip), so the ~13 us of entering the loop for every round, which
# the benchmark table includes, stays out of the ratio.
@pytest.mark.benchmark(group="2 process round trip")
def test_process_round_trip(benchmark: Any, run: Run, layer: Any, record: Record) -> None:
    channel = run(layer.new_channel())
    latencies: list[float] = []

    def one_round_trip() -> None:
        elapsed, intact = run(round_trip(layer, channel))
        assert intact
        latencies.append(elapsed)

    benchmark.pedantic(one_round_trip, rounds=ROUND_TRIPS, warmup_rounds=50)
    if round_times(benchmark) is not None:
        measured = latencies[-ROUND_TRIPS:]
        record("2 process round trip p50", statistics.median(measured) * 1e6)
        record("2 process round trip p99", statistics.quantiles(measured, n=100)[98] * 1e6)


# 3. group fan-out -------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="3 group_send fan-out")
@pytest.mark.parametrize("members", [10, 100, 1000])
def test_group_send(benchmark: Any, run: Run, layer: Any, record: Record, members: int) -> None:
    # The members are websocket consumers of one process: a process channel each, all in one group.
    async def join() -> list[str]:
        channels = [await layer.new_channel() for _ in range(members)]
        for channel in channels:
            await layer.group_add(GROUP, channel)
        return channels

    channels = run(join())
    intact = benchmark.pedantic(lambda: run(fan_out(layer, channels)), rounds=FAN_OUT_ROUNDS, warmup_rounds=2)
    assert intact == members
    times = round_times(benchmark)
    if times is not None:
        record(f"3 group_send to {members} process channels", members / statistics.median(times))


# 5. consumer churn ------------------------------------------------------------------------------------------------


async def consumer_leaves(layer: Any, channel: str) -> None:
    """What a consumer does when its websocket closes: leave the group; its pending receive is cancelled."""
    await layer.group_discard(GROUP, channel)
    pending = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)  # the receive starts; then the ASGI server cancels it, as at a real disconnect
    pending.cancel()
    (outcome,) = await asyncio.gather(pending, return_exceptions=True)
    if not isinstance(outcome, asyncio.CancelledError):
        raise AssertionError(f"{channel!r} received {outcome!r} after its only message had been taken")


async def churn_wave(layer: Any, size: int) -> int:
    """``size`` consumers connect and join the group, each receives one group message, all leave.

    How many received the group message intact.
    """

    async def join() -> str:
        channel = str(await layer.new_channel())
        await layer.group_add(GROUP, channel)
        return channel

    channels = await asyncio.gather(*(join() for _ in range(size)))
    intact = await fan_out(layer, list(channels))
    await asyncio.gather(*(consumer_leaves(layer, channel) for channel in channels))
    return intact


async def churn(layer: Any, consumers: int) -> int:
    """``consumers`` come and go in waves of CHURN_WAVE; how many received their group message intact."""
    intact = 0
    for start in range(0, consumers, CHURN_WAVE):
        intact += await churn_wave(layer, min(CHURN_WAVE, consumers - start))
    return intact


def pubsub_channels(server: ValkeyProcess, prefix: str) -> int:
    """How many Pub/Sub channels of ``prefix`` have a subscriber on the server (the prefixes hold no globs)."""
    with server.client() as client:
        return len(client.pubsub_channels(prefix + "*"))


async def settle_channels(server: ValkeyProcess, prefix: str, baseline: int, timeout: float) -> int:
    """Wait, with the loop running, until ``prefix`` has at most ``baseline`` Pub/Sub channels; the last count.

    Ours unsubscribes idle process channels from a task on this loop after ``expiry`` seconds, so the wait must
    leave the loop free. Returns the count once it is down to ``baseline``, or at ``timeout``: a leak is a figure
    of the report, not a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = pubsub_channels(server, prefix)
        if count <= baseline or time.monotonic() >= deadline:
            return count
        # Server state, so there is nothing to await but time; the layer's own tasks run meanwhile.
        await asyncio.sleep(0.05)


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.slow
def test_churn(
    run: Run,
    make_layer: Callable[..., Any],
    prefix: str,
    record: Record,
    valkey_server: ValkeyProcess,
    measuring: bool,
) -> None:
    layer = make_layer(expiry=CHURN_EXPIRY)
    channels_before = pubsub_channels(valkey_server, prefix)
    tracemalloc.start()
    try:
        intact = run(churn(layer, CHURN_WARMUP))
        run(settle_channels(valkey_server, prefix, channels_before, CHANNELS_SETTLE_TIMEOUT))
        baseline = traced_bytes()
        intact += run(churn(layer, CHURN_CONSUMERS))
        channels_left = run(settle_channels(valkey_server, prefix, channels_before, CHANNELS_SETTLE_TIMEOUT))
        growth = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    assert intact == CHURN_WARMUP + CHURN_CONSUMERS
    channels_left -= channels_before
    print(
        f"churn of {CHURN_CONSUMERS} consumers: {growth / 1024:.1f} KiB growth, "
        f"{channels_left} Pub/Sub channels left"
    )
    if measuring:
        record("5 churn memory growth", growth / 1024)
        record("5 churn Pub/Sub channels left", channels_left)
