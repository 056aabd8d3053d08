"""The core layer on a Valkey Cluster next to the core layer on one server, in the same run (issue #8).

Run: ``hatch run bench:run benchmarks/core -k cluster``. channels_redis cannot run on a cluster (cross-slot and
MOVED errors), so there is no peer here: each test times ours on the session's cluster (3 primaries with a replica
each, started by benchmarks/conftest.py) and ours on the session's single bench server, taking turns round by round
as the other suites do (``take_turns``), and the table at the end gives cluster / single. No row has a target.

Every node of the cluster runs on this machine, sharing its cores with the client and the single server, so the
cluster cannot show more server capacity than one server. What the rows show is what cluster mode costs the
client (routing by slot, hash-tagged keys, one script call per slot where one server takes one call per 500 keys)
and how ``group_send`` spreads its calls over the nodes (pipelined per node, nodes in parallel).

The group_send rows fan out to process channels of ``PROCESSES`` layers, as a group of websocket consumers spread
over that many server processes: each layer's process channels share one queue key, so each layer is one slot of
the cluster, and a group_send makes one script call per layer there, on the node that owns it. (Process channels
of a single layer would all land in one slot and show no spread; the normal-channel row is the far end, one slot
per member.) The last column counts the script calls (``EVALSHA``) one group_send made on each server, the lookup
of the group's members included, as the servers counted them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from checked_flows import GROUP, Fan, fan_out, produce_and_consume, send_receive_pairs

CHANNEL = "bench.queue"

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 11
ROUND_TRIPS = 2000
#: Round trips one side runs before the other's turn: a round trip takes under a millisecond.
ROUND_TRIP_TURN = 25
#: Layers (server processes) whose process channels make up a group.
PROCESSES = 10
FAN_OUT_ROUNDS = 60
#: group_sends one side runs before the other's turn: each takes a few to a few tens of milliseconds.
FAN_OUT_TURN = 5
#: The command whose calls the last column counts (lower case, as INFO commandstats names it).
COUNTED = ("evalsha",)

Run = Callable[..., Any]
Record = Callable[[str, Mapping[str, float]], None]
#: ``flow_turns(flow, channels, amount, rounds=)`` (benchmarks/conftest.py): a message flow timed in turns.
FlowTurns = Callable[..., Any]
#: ``compare_fan_out`` and ``fan_out_to_processes`` of benchmarks/conftest.py.
CompareFanOut = Callable[..., None]
Layers = dict[str, Any]


def process_row(members: int) -> str:
    return f"3 group_send {members} process channels of {PROCESSES} layers"


#: Row name of the table -> its unit and whether a higher figure is the better one.
ROWS: dict[str, tuple[str, bool]] = {
    "1a send+receive sequential": ("messages/s", True),
    "1b send+receive concurrent": ("messages/s", True),
    "1c client CPU per message": ("us", False),
    "2 process round trip p50": ("us", False),
    "2 process round trip p99": ("us", False),
    process_row(100): ("deliveries/s", True),
    process_row(1000): ("deliveries/s", True),
    "3 group_send 100 normal channels": ("deliveries/s", True),
}


@pytest.fixture(scope="session")
def report(cluster_report: Any) -> Any:
    """This module's table (it replaces the core suite's ``report`` here, so ``record`` files into it)."""
    return cluster_report("core_cluster", subject="core layer", rows=ROWS, calls="EVALSHA single | by node")


@pytest.fixture
def layers(cluster_layers: Layers) -> Layers:
    """A layer on the cluster and one on the single server (``cluster_layers``), for the fixtures that take
    ``layers``."""
    return cluster_layers


# 1. send+receive throughput ---------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 1a send+receive sequential")
def test_cluster_send_receive_sequential(flow_turns: FlowTurns, record: Record) -> None:
    turns = flow_turns(send_receive_pairs, CHANNEL, SEQUENTIAL_PAIRS, rounds=THROUGHPUT_ROUNDS)
    if turns.timed:
        record("1a send+receive sequential", turns.rate(SEQUENTIAL_PAIRS))


@pytest.mark.benchmark(group="cluster 1b send+receive concurrent")
def test_cluster_send_receive_concurrent(flow_turns: FlowTurns, record: Record) -> None:
    turns = flow_turns(produce_and_consume, CHANNEL, CONCURRENT_MESSAGES, rounds=THROUGHPUT_ROUNDS)
    if turns.timed:
        record("1b send+receive concurrent", turns.rate(CONCURRENT_MESSAGES))
        record("1c client CPU per message", turns.cpu_per(CONCURRENT_MESSAGES))


# 2. process-channel round trip ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 2 process round trip")
def test_cluster_process_round_trip(process_round_trips: Callable[..., None]) -> None:
    process_round_trips(rounds=ROUND_TRIPS, turn=ROUND_TRIP_TURN)


# 3. group_send ----------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 3 group_send to process channels")
@pytest.mark.parametrize("members", [100, 1000])
def test_cluster_group_send_process_channels(fan_out_to_processes: CompareFanOut, members: int) -> None:
    fan_out_to_processes(
        members,
        processes=PROCESSES,
        row=process_row(members),
        rounds=FAN_OUT_ROUNDS,
        turn=FAN_OUT_TURN,
        counted=COUNTED,
    )


@pytest.mark.benchmark(group="cluster 3 group_send to normal channels")
def test_cluster_group_send_normal_channels(compare_fan_out: CompareFanOut, run: Run, layers: Layers) -> None:
    members = 100
    channels = [f"bench.member{index}" for index in range(members)]

    async def join(layer: Any) -> None:
        for channel in channels:
            await layer.group_add(GROUP, channel)

    for layer in layers.values():
        run(join(layer))
    fans = {side: Fan.of(layer, channels) for side, layer in layers.items()}
    compare_fan_out(
        layers,
        lambda side: run(fan_out(fans[side])),
        row="3 group_send 100 normal channels",
        members=members,
        rounds=FAN_OUT_ROUNDS,
        turn=FAN_OUT_TURN,
        counted=COUNTED,
    )
