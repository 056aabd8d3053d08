"""send, receive and group_send of the core layer, ours side by side with channels_redis 4 (the targets of issue #5).

Run: ``hatch run bench:run benchmarks/core``. Every test runs once per side, on the session's Valkey server, in
this one process, each side under its own prefix; the ratio table at the end of the run comes from conftest.py.
Figures are wall time per round unless a test says otherwise; the server runs in another process, so
``time.process_time()`` is the client's CPU alone. ``CORE_SOAK_MESSAGES`` scales the soak (default 5,000; the
issue's figure is 200,000).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.cli.measure.flows import (
    GROUP,
    MESSAGE,
    fan_out,
    produce_and_consume,
    round_trip,
    send_receive_pairs,
)

from servers.process import ValkeyProcess

CHANNEL = "bench.queue"

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 5
ROUND_TRIPS = 1000
MEMBERS = 100
FAN_OUT_ROUNDS = 30
BACKLOG = 2000
BACKLOG_ROUNDS = 5

SOAK_MESSAGES = int(os.environ.get("CORE_SOAK_MESSAGES", "5000"))
#: Messages moved before the memory baseline is taken: connections, caches and buffers reach their size first.
SOAK_WARMUP = max(1000, SOAK_MESSAGES // 10)
#: Consumers present at any time during the soak; one joins and the oldest leaves at every step.
SOAK_CONSUMERS = 10
#: Messages sent and received through the normal channel at every step of the soak.
SOAK_PAIRS = 5

Run = Callable[..., Any]
Record = Callable[[str, float], None]


def round_times(benchmark: Any) -> list[float] | None:
    """The seconds each timed round took, or None when benchmarks are disabled (nothing to compare then)."""
    metadata = getattr(benchmark, "stats", None)
    if not metadata:
        return None
    return list(metadata.stats.data)


# The work, one function per benchmark (a profiler can call the same ones) -----------------------------------------


async def drain(layer: Any, count: int) -> int:
    """Receive ``count`` messages one after the other; how many came intact."""
    return sum([await layer.receive(CHANNEL) == MESSAGE for _ in range(count)])


def fill_backlog(server: ValkeyProcess, layer: Any, count: int) -> None:
    """Queue ``count`` messages on CHANNEL in one command, in the layer's own bytes, oldest first."""
    now = time.time()
    members = {layer.serialize(MESSAGE): now + index * 1e-6 for index in range(count)}
    key = layer.prefix + CHANNEL
    with server.client() as client:
        client.zadd(key, members)
        client.expire(key, int(layer.expiry))


# 1. send+receive throughput ----------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="1a send+receive sequential")
def test_send_receive_sequential(benchmark: Any, run: Run, layer: Any, record: Record) -> None:
    intact = benchmark.pedantic(
        lambda: run(send_receive_pairs(layer, CHANNEL, SEQUENTIAL_PAIRS)),
        rounds=THROUGHPUT_ROUNDS,
        warmup_rounds=1,
    )
    assert intact == SEQUENTIAL_PAIRS
    times = round_times(benchmark)
    if times is not None:
        record("1a send+receive sequential", SEQUENTIAL_PAIRS / statistics.median(times))


# 1b and 5: the concurrent flow, timed in wall time and in the client's CPU time.
@pytest.mark.benchmark(group="1b send+receive concurrent")
def test_send_receive_concurrent(benchmark: Any, run: Run, layer: Any, record: Record) -> None:
    cpu: list[float] = []

    def flow() -> int:
        start = time.process_time()
        intact = run(produce_and_consume(layer, CHANNEL, CONCURRENT_MESSAGES))
        cpu.append(time.process_time() - start)
        return int(intact)

    intact = benchmark.pedantic(flow, rounds=THROUGHPUT_ROUNDS, warmup_rounds=1)
    assert intact == CONCURRENT_MESSAGES
    times = round_times(benchmark)
    if times is not None:
        record("1b send+receive concurrent", CONCURRENT_MESSAGES / statistics.median(times))
        cpu_per_message = statistics.median(cpu[-THROUGHPUT_ROUNDS:]) / CONCURRENT_MESSAGES
        record("5 client CPU per message", cpu_per_message * 1e6)


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


# 3. group_send to 100 members -------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="3 group_send to 100 members")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_group_send(benchmark: Any, run: Run, layer: Any, record: Record, kind: str) -> None:
    async def join() -> list[str]:
        # Process channels of one layer are 100 websocket consumers of one process; normal channels are
        # 100 named queues.
        if kind == "process":
            channels = [await layer.new_channel() for _ in range(MEMBERS)]
        else:
            channels = [f"bench.member{index}" for index in range(MEMBERS)]
        for channel in channels:
            await layer.group_add(GROUP, channel)
        return channels

    channels = run(join())
    intact = benchmark.pedantic(lambda: run(fan_out(layer, channels)), rounds=FAN_OUT_ROUNDS, warmup_rounds=2)
    assert intact == MEMBERS
    times = round_times(benchmark)
    if times is not None:
        record(f"3 group_send 100 {kind} channels", MEMBERS / statistics.median(times))


# 4. backlog drain -------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="4 backlog drain 2000")
def test_backlog_drain(
    benchmark: Any, run: Run, layer: Any, record: Record, valkey_server: ValkeyProcess
) -> None:
    intact = benchmark.pedantic(
        lambda: run(drain(layer, BACKLOG)),
        setup=lambda: fill_backlog(valkey_server, layer, BACKLOG),
        rounds=BACKLOG_ROUNDS,
        warmup_rounds=1,
    )
    assert intact == BACKLOG
    times = round_times(benchmark)
    if times is not None:
        record("4 backlog drain 2000", BACKLOG / statistics.median(times))


# 6. memory soak ---------------------------------------------------------------------------------------------------


class Soak:
    """A room whose consumers come and go while messages flow through a normal channel and the group."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.consumers: deque[str] = deque()

    async def step(self) -> int:
        """One consumer joins, the oldest leaves, messages flow; how many messages were delivered."""
        layer = self.layer
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        self.consumers.append(channel)
        if len(self.consumers) > SOAK_CONSUMERS:
            await layer.group_discard(GROUP, self.consumers.popleft())
        delivered = await send_receive_pairs(layer, CHANNEL, SOAK_PAIRS)
        delivered += await fan_out(layer, list(self.consumers))
        assert delivered == SOAK_PAIRS + len(self.consumers)
        return delivered

    async def flow(self, messages: int) -> None:
        moved = 0
        while moved < messages:
            moved += await self.step()

    async def leave_all(self) -> None:
        while self.consumers:
            await self.layer.group_discard(GROUP, self.consumers.popleft())


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def count_keys(server: ValkeyProcess, prefix: str) -> int:
    """Keys of ``prefix`` on the server, counted with SCAN (the prefixes here hold no glob characters)."""
    with server.client() as client:
        return sum(1 for _ in client.scan_iter(match=prefix + "*", count=1000))


@pytest.mark.slow
def test_soak(run: Run, layer: Any, record: Record, valkey_server: ValkeyProcess, measuring: bool) -> None:
    keys_before = count_keys(valkey_server, layer.prefix)
    soak = Soak(layer)
    tracemalloc.start()
    try:
        run(soak.flow(SOAK_WARMUP))
        baseline = traced_bytes()
        run(soak.flow(SOAK_MESSAGES - SOAK_WARMUP))
        growth = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    run(soak.leave_all())
    run(layer.wait_received())  # the peer removes its in-flight backups in background tasks
    keys_left = count_keys(valkey_server, layer.prefix) - keys_before
    print(f"soak of {SOAK_MESSAGES} messages: {growth / 1024:.1f} KiB growth, {keys_left} keys left")
    if measuring:
        record("6 soak memory growth", growth / 1024)
        record("6 soak keys left", keys_left)
