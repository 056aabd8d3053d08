"""send, receive and group_send of the Pub/Sub layer, ours side by side with channels_redis 4 (issue #6's targets).

Run: ``hatch run bench:run benchmarks/pubsub``. Both layers work on the session's Valkey server, in this one
process, each side under its own prefix; the ratio table at the end of the run comes from conftest.py.

Each timed test measures both sides in turns (``take_turns`` in benchmarks/conftest.py): pytest-benchmark times
ours with ``benchmark.pedantic``, and between its rounds the peer runs as many rounds of the same work, timed with
the same clock, in alternating blocks (peer, ours, ours, peer, ...). This machine's speed drifts by tens of percent
over minutes, so comparing two tests run minutes apart made noisy ratios; rounds compared a few seconds apart drift
together. Both sides' figures come from the median round, so that the ratio is of like with like. Short rounds go
in blocks (round trips 25 at a time, group_sends 5), as ``channels-valkey bench`` does.

Figures are wall time per round unless a test says otherwise; the server runs in another process, so
``time.process_time()`` is the client's CPU alone. The churn measures one side at a time: its figures are the
memory the process keeps and the server's Pub/Sub channels, which two layers at work at once would blur.
``PUBSUB_CHURN_CONSUMERS`` scales the churn (consumers measured after the warm-up; default 10,000, the issue's
figure; about 25 s per side here; a quick run has a few hundred). Every message carries a sequence number and every
flow checks that what arrived is what was sent, in order (benchmarks/checked_flows.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from checked_flows import GROUP, Fan, fan_out, produce_and_consume, receives_alone, send_receive_pairs
from servers.process import ValkeyProcess

#: The normal channel of the throughput tests; each side adds a digit of its own (open_channels).
CHANNEL = "bench.queue"
#: What listen() sends to a normal channel until this process receives from it, and the marker it ends with.
PROBE = {"type": "bench.probe"}
READY = {"type": "bench.ready"}
LISTEN_TIMEOUT = 10.0

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 10
ROUND_TRIPS = 1000
#: Round trips one side runs before the other's turn: a round trip takes under a millisecond.
ROUND_TRIP_TURN = 25
FAN_OUT_ROUNDS = 30
#: group_sends one side runs before the other's turn: each takes a few milliseconds.
FAN_OUT_TURN = 5

#: Consumers measured by the churn, after the warm-up.
CHURN_CONSUMERS = int(os.environ.get("PUBSUB_CHURN_CONSUMERS", "10000"))
#: Consumers measured by the churn in a quick run (``--bench-quick``).
QUICK_CHURN_CONSUMERS = 300
#: Consumers that connect together, share one group message, and leave together: a burst of page loads.
CHURN_WAVE = 100
#: ``expiry`` of the churn's layers: ours unsubscribes a process channel nobody received from for this long.
CHURN_EXPIRY = 2
#: Longest wait for the server's Pub/Sub channels to return to their count before the churn.
CHANNELS_SETTLE_TIMEOUT = 10 * CHURN_EXPIRY

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


async def open_channel(layer: Any, kind: str, name: str) -> str:
    """A channel of ``kind`` ready to receive: a new process channel, or the normal channel ``name`` listened to."""
    if kind == "process":
        return str(await layer.new_channel())
    await listen(layer, name)
    return name


def open_channels(run: Run, layers: Layers, kind: str) -> dict[str, str]:
    """A channel of ``kind`` for each side, ready to receive, by side.

    Each side's normal channel has a name of its own, of the same length: ours also subscribes to a normal
    channel's plain name, where channels_redis publishes it (for rolling upgrades), so on one shared name ours
    would receive the peer's messages too.
    """
    return {
        side: run(open_channel(layer, kind, f"{CHANNEL}{index}"))
        for index, (side, layer) in enumerate(layers.items())
    }


@pytest.mark.benchmark(group="1 send+receive sequential")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_send_receive_sequential(
    flow_turns: FlowTurns, run: Run, layers: Layers, record: Record, kind: str
) -> None:
    turns = flow_turns(
        send_receive_pairs, open_channels(run, layers, kind), SEQUENTIAL_PAIRS, rounds=THROUGHPUT_ROUNDS
    )
    if turns.timed:
        row = (
            "1a send+receive process sequential" if kind == "process" else "1c send+receive normal sequential"
        )
        record(row, turns.rate(SEQUENTIAL_PAIRS))


# 1b, 1d and 4: the concurrent flow, timed in wall time and (process channels) in the client's CPU time.
@pytest.mark.benchmark(group="1 send+receive concurrent")
@pytest.mark.parametrize("kind", ["process", "normal"])
def test_send_receive_concurrent(
    flow_turns: FlowTurns, run: Run, layers: Layers, record: Record, kind: str
) -> None:
    turns = flow_turns(
        produce_and_consume, open_channels(run, layers, kind), CONCURRENT_MESSAGES, rounds=THROUGHPUT_ROUNDS
    )
    if turns.timed:
        if kind == "process":
            record("1b send+receive process concurrent", turns.rate(CONCURRENT_MESSAGES))
            record("4 client CPU per message", turns.cpu_per(CONCURRENT_MESSAGES))
        else:
            record("1d send+receive normal concurrent", turns.rate(CONCURRENT_MESSAGES))


# 1e: normal channels like for like: ours with worker_channels="pubsub" publishes them to every listening process,
# as the peer does, instead of queueing each for one process.
@pytest.mark.benchmark(group="1 send+receive sequential")
def test_send_receive_normal_like_for_like(
    flow_turns: FlowTurns, run: Run, layers: Layers, build_layer: Callable[..., Any], record: Record
) -> None:
    ours, peer = layers  # the sides' names, ours first
    pair = {ours: build_layer(ours, worker_channels="pubsub"), peer: layers[peer]}
    turns = flow_turns(
        send_receive_pairs,
        open_channels(run, pair, "normal"),
        SEQUENTIAL_PAIRS,
        rounds=THROUGHPUT_ROUNDS,
        pair=pair,
    )
    if turns.timed:
        record("1e send+receive normal sequential, both on Pub/Sub", turns.rate(SEQUENTIAL_PAIRS))


# 1f, 1g: another process's shape: one layer instance sends, another receives, at most a window of messages in flight.
WINDOW = 50
WINDOWED_MESSAGES = 1000


@pytest.mark.benchmark(group="1 send+receive concurrent")
@pytest.mark.parametrize("kind", ["normal", "process"])
def test_send_receive_between_two_instances(
    windowed_turns: Callable[..., None], run: Run, layers: Layers, kind: str
) -> None:
    row = {"normal": "1f normal", "process": "1g process"}[kind] + ", two instances, window of 50"
    channels = open_channels(run, layers, kind)
    windowed_turns(channels, count=WINDOWED_MESSAGES, window=WINDOW, rounds=THROUGHPUT_ROUNDS, row=row)


# 2. process-channel round trip ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="2 process round trip")
def test_process_round_trip(process_round_trips: Callable[..., None]) -> None:
    process_round_trips(rounds=ROUND_TRIPS, turn=ROUND_TRIP_TURN, floor=True)


# 3. group fan-out -------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="3 group_send fan-out")
@pytest.mark.parametrize("members", [10, 100, 1000])
def test_group_send(take_turns: TakeTurns, run: Run, layers: Layers, record: Record, members: int) -> None:
    # The members are websocket consumers of one process: a process channel each, all in one group.
    async def join(layer: Any) -> list[str]:
        channels = [await layer.new_channel() for _ in range(members)]
        for channel in channels:
            await layer.group_add(GROUP, channel)
        return channels

    fans = {side: Fan.of(layer, run(join(layer))) for side, layer in layers.items()}
    # Before each round, untimed by take_turns: the same gather of timed receives with nothing behind them, so that
    # each side's floor is measured next to its own rounds.
    floors: dict[str, list[float]] = {side: [] for side in layers}
    turns = take_turns(
        layers,
        lambda side: run(fan_out(fans[side])),
        rounds=FAN_OUT_ROUNDS,
        turn=FAN_OUT_TURN,
        warmup=2,
        before_round=lambda side: floors[side].append(run(receives_alone(fans[side]))),
    )
    turns.check(members)
    if turns.timed:
        record(f"3 group_send to {members} process channels", turns.rate(members))
        record(
            f"3 group_send to {members}, per member above the floor",
            {
                side: (statistics.median(turns.seconds[side]) - statistics.median(floors[side]))
                / members
                * 1e6
                for side in layers
            },
        )


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


async def churn_wave(fan: Fan, size: int) -> int:
    """``size`` consumers connect and join the group, each receives one group message, all leave.

    How many received the group message as sent (``fan_out`` raises when one did not).
    """
    layer = fan.sender

    async def join() -> str:
        channel = str(await layer.new_channel())
        await layer.group_add(GROUP, channel)
        return channel

    channels = await asyncio.gather(*(join() for _ in range(size)))
    fan.members = [(layer, channel) for channel in channels]
    intact = await fan_out(fan)
    await asyncio.gather(*(consumer_leaves(layer, channel) for channel in channels))
    return intact


async def churn(fan: Fan, consumers: int) -> int:
    """``consumers`` come and go in waves of CHURN_WAVE; how many received their group message as sent."""
    intact = 0
    for start in range(0, consumers, CHURN_WAVE):
        intact += await churn_wave(fan, min(CHURN_WAVE, consumers - start))
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
    side: str,
    record: Record,
    valkey_server: ValkeyProcess,
    measuring: bool,
    size: Size,
) -> None:
    consumers = size(CHURN_CONSUMERS, quick=QUICK_CHURN_CONSUMERS)
    # Consumers that come and go before the memory baseline is taken: connections and caches reach their size first.
    warmup = max(2 * CHURN_WAVE, consumers // 10)
    layer = make_layer(expiry=CHURN_EXPIRY)
    fan = Fan(layer)
    channels_before = pubsub_channels(valkey_server, prefix)
    tracemalloc.start()
    try:
        intact = run(churn(fan, warmup))
        run(settle_channels(valkey_server, prefix, channels_before, CHANNELS_SETTLE_TIMEOUT))
        baseline = traced_bytes()
        intact += run(churn(fan, consumers))
        channels_left = run(settle_channels(valkey_server, prefix, channels_before, CHANNELS_SETTLE_TIMEOUT))
        growth = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    assert intact == warmup + consumers
    channels_left -= channels_before
    print(
        f"churn of {consumers} consumers: {growth / 1024:.1f} KiB growth, {channels_left} Pub/Sub channels left"
    )
    if measuring:
        record("5 churn memory growth", {side: growth / 1024})
        record("5 churn Pub/Sub channels left", {side: channels_left})
