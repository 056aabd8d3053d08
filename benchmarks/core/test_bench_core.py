"""send, receive and group_send of the core layer, ours side by side with channels_redis 4 (the targets of issue #5).

Run: ``hatch run bench:run benchmarks/core``. Both layers work on the session's Valkey server, in this one process,
each side under its own prefix; the ratio table at the end of the run comes from conftest.py.

Each timed test measures both sides in turns (``take_turns`` in benchmarks/conftest.py): pytest-benchmark times
ours with ``benchmark.pedantic``, and between its rounds the peer runs as many rounds of the same work, timed with
the same clock, in alternating blocks (peer, ours, ours, peer, ...). This machine's speed drifts by tens of percent
over minutes, so comparing two tests run minutes apart gave ratios anywhere from 3.7 to 6.3; rounds compared a few
seconds apart drift together. Both sides' figures come from the median round, so that the ratio is of like with
like. Short rounds go in blocks (round trips 25 at a time, group_sends 5), as in ``channels-valkey bench``; after
each block, the side that ran it finishes its background work (``wait_received``, untimed), so that the peer's
clean-up of in-flight backups does not weigh on ours, nor ours on the peer.

Figures are wall time per round unless a test says otherwise; the server runs in another process, so
``time.process_time()`` is the client's CPU alone. The soak measures one side at a time: its figure is the memory
the process keeps, which two layers at work in one process would share. ``CORE_SOAK_MESSAGES`` scales the soak
(default 5,000; the issue's figure is 200,000; a quick run moves a few hundred). Every message carries a sequence
number and every flow checks that what arrived is what was sent, in order (benchmarks/checked_flows.py); the soak
fails when it leaves keys on the server.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from checked_flows import (
    GROUP,
    Fan,
    Stream,
    drain,
    fan_out,
    numbered,
    produce_and_consume,
    send_receive_pairs,
)
from servers.process import ValkeyProcess

CHANNEL = "bench.queue"

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 5
ROUND_TRIPS = 1000
#: Round trips one side runs before the other's turn: a round trip takes under a millisecond.
ROUND_TRIP_TURN = 25
MEMBERS = 100
FAN_OUT_ROUNDS = 30
#: group_sends one side runs before the other's turn: each takes a few milliseconds.
FAN_OUT_TURN = 5
BACKLOG = 2000
#: 1c, 1d: messages one instance sends to another, and how many may be in flight at once.
WINDOWED_MESSAGES = 1000
WINDOW = 50
BACKLOG_ROUNDS = 5

SOAK_MESSAGES = int(os.environ.get("CORE_SOAK_MESSAGES", "5000"))
#: Messages the soak moves in a quick run (``--bench-quick``).
QUICK_SOAK_MESSAGES = 300
#: Consumers present at any time during the soak; one joins and the oldest leaves at every step.
SOAK_CONSUMERS = 10
#: Messages sent and received through the normal channel at every step of the soak.
SOAK_PAIRS = 5

Run = Callable[..., Any]
Record = Callable[[str, Mapping[str, float]], None]
#: ``take_turns`` of benchmarks/conftest.py: it returns a ``Turns``.
TakeTurns = Callable[..., Any]
#: ``flow_turns(flow, channels, amount, rounds=)`` (benchmarks/conftest.py): a message flow timed in turns.
FlowTurns = Callable[..., Any]
Layers = dict[str, Any]
#: ``size(full, quick=n)`` (benchmarks/conftest.py): ``n`` in a quick run.
Size = Callable[..., int]


# The work, one function per benchmark (a profiler can call the same ones) -----------------------------------------


def fill_backlog(server: ValkeyProcess, stream: Stream, count: int) -> None:
    """Queue the stream's next ``count`` numbered messages on its channel in one command, in the layer's own bytes,
    oldest first."""
    layer = stream.layer
    now = time.time()
    members = {
        layer.serialize(numbered(number)): now + index * 1e-6
        for index, number in enumerate(stream.to_send(count))
    }
    # Ours documents where a channel's queue lives; channels_redis 4 has no such call and keeps it at prefix + name.
    key = layer.queue_key(stream.channel) if hasattr(layer, "queue_key") else layer.prefix + stream.channel
    with server.client() as client:
        client.zadd(key, members)
        client.expire(key, int(layer.expiry))


# 1. send+receive throughput ----------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="1a send+receive sequential")
def test_send_receive_sequential(flow_turns: FlowTurns, record: Record) -> None:
    turns = flow_turns(send_receive_pairs, CHANNEL, SEQUENTIAL_PAIRS, rounds=THROUGHPUT_ROUNDS)
    if turns.timed:
        record("1a send+receive sequential", turns.rate(SEQUENTIAL_PAIRS))


# 1b and 5: the concurrent flow, timed in wall time and in the client's CPU time.
@pytest.mark.benchmark(group="1b send+receive concurrent")
def test_send_receive_concurrent(flow_turns: FlowTurns, record: Record) -> None:
    turns = flow_turns(produce_and_consume, CHANNEL, CONCURRENT_MESSAGES, rounds=THROUGHPUT_ROUNDS)
    if turns.timed:
        record("1b send+receive concurrent", turns.rate(CONCURRENT_MESSAGES))
        record("5 client CPU per message", turns.cpu_per(CONCURRENT_MESSAGES))


# 1c, 1d: another process's shape: one layer instance sends, another receives, at most a window of messages in flight.
@pytest.mark.benchmark(group="1b send+receive concurrent")
@pytest.mark.parametrize("kind", ["normal", "process"])
def test_send_receive_between_two_instances(
    windowed_turns: Callable[..., None], run: Run, layers: Layers, kind: str
) -> None:
    channels = {
        side: run(layer.new_channel()) if kind == "process" else f"{CHANNEL}{index}"
        for index, (side, layer) in enumerate(layers.items())
    }
    row = {"normal": "1c normal", "process": "1d process"}[kind] + ", two instances, window of 50"
    windowed_turns(channels, count=WINDOWED_MESSAGES, window=WINDOW, rounds=THROUGHPUT_ROUNDS, row=row)


# 2. process-channel round trip ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="2 process round trip")
def test_process_round_trip(process_round_trips: Callable[..., None]) -> None:
    process_round_trips(rounds=ROUND_TRIPS, turn=ROUND_TRIP_TURN)


@pytest.mark.benchmark(group="2 process round trip")
def test_process_round_trip_without_receipts(
    process_round_trips: Callable[..., None], layers: Mapping[str, Any], build_layer: Callable[..., Any]
) -> None:
    """The same with ``ResiliencePolicy(receipts=False)``: readers pop with ``BZMPOP``, as 0.3 did, one round trip
    less for a receive that waits (a connection cut with a pop's reply on the wire loses what it carried)."""
    from channels_valkey.sentinel import ResiliencePolicy  # ours only when measured (see layer_classes)

    ours, peer = layers  # the sides' names, ours first
    pair = {ours: build_layer(ours, policy=ResiliencePolicy(receipts=False)), peer: layers[peer]}
    process_round_trips(
        rounds=ROUND_TRIPS, turn=ROUND_TRIP_TURN, pair=pair, name="2b process round trip, receipts off"
    )


# 3. group_send to 100 members -------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="3 group_send to 100 members")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_group_send(take_turns: TakeTurns, run: Run, layers: Layers, record: Record, kind: str) -> None:
    async def join(layer: Any) -> list[str]:
        # Process channels of one layer are 100 websocket consumers of one process; normal channels are
        # 100 named queues.
        if kind == "process":
            channels = [await layer.new_channel() for _ in range(MEMBERS)]
        else:
            channels = [f"bench.member{index}" for index in range(MEMBERS)]
        for channel in channels:
            await layer.group_add(GROUP, channel)
        return channels

    fans = {side: Fan.of(layer, run(join(layer))) for side, layer in layers.items()}
    turns = take_turns(
        layers,
        lambda side: run(fan_out(fans[side])),
        rounds=FAN_OUT_ROUNDS,
        turn=FAN_OUT_TURN,
        warmup=2,
    )
    turns.check(MEMBERS)
    if turns.timed:
        record(f"3 group_send 100 {kind} channels", turns.rate(MEMBERS))


# 4. backlog drain -------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="4 backlog drain 2000")
def test_backlog_drain(
    take_turns: TakeTurns, run: Run, layers: Layers, record: Record, valkey_server: ValkeyProcess
) -> None:
    streams = {side: Stream(layer, CHANNEL) for side, layer in layers.items()}
    turns = take_turns(
        layers,
        lambda side: run(drain(streams[side], BACKLOG)),
        rounds=BACKLOG_ROUNDS,
        warmup=1,
        before_round=lambda side: fill_backlog(valkey_server, streams[side], BACKLOG),
    )
    turns.check(BACKLOG)
    if turns.timed:
        record("4 backlog drain 2000", turns.rate(BACKLOG))


# 6. memory soak ---------------------------------------------------------------------------------------------------


class Soak:
    """A room whose consumers come and go while messages flow through a normal channel and the group."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.consumers: deque[str] = deque()
        self.stream = Stream(layer, CHANNEL)
        self.fan = Fan(layer)

    async def step(self) -> int:
        """One consumer joins, the oldest leaves, messages flow; how many messages were delivered.

        The flows raise when a message is lost, duplicated or out of order: every consumer present must get this
        step's group message, and nothing of an earlier one.
        """
        layer = self.layer
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        self.consumers.append(channel)
        if len(self.consumers) > SOAK_CONSUMERS:
            await layer.group_discard(GROUP, self.consumers.popleft())
        delivered = await send_receive_pairs(self.stream, SOAK_PAIRS)
        self.fan.members = [(layer, consumer) for consumer in self.consumers]
        delivered += await fan_out(self.fan)
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
def test_soak(
    run: Run,
    layer: Any,
    side: str,
    record: Record,
    valkey_server: ValkeyProcess,
    measuring: bool,
    size: Size,
) -> None:
    messages = size(SOAK_MESSAGES, quick=QUICK_SOAK_MESSAGES)
    # Messages moved before the memory baseline is taken: connections, caches and buffers reach their size first.
    warmup = max(min(1000, messages // 2), messages // 10)
    keys_before = count_keys(valkey_server, layer.prefix)
    soak = Soak(layer)
    tracemalloc.start()
    try:
        run(soak.flow(warmup))
        baseline = traced_bytes()
        run(soak.flow(messages - warmup))
        growth = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    run(soak.leave_all())
    run(layer.wait_received())  # the peer removes its in-flight backups in background tasks
    keys_left = count_keys(valkey_server, layer.prefix) - keys_before
    print(f"soak of {messages} messages: {growth / 1024:.1f} KiB growth, {keys_left} keys left")
    if measuring:
        record("6 soak memory growth", {side: growth / 1024})
        record("6 soak keys left", {side: keys_left})
    assert keys_left == 0, f"{side} left {keys_left} keys of its prefix on the server after the soak"
