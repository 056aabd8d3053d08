"""The Pub/Sub layer on a Valkey Cluster next to the Pub/Sub layer on one server, in the same run (issue #8).

Run: ``hatch run bench:run benchmarks/pubsub -k cluster``. channels_redis's Pub/Sub layer does not run on a cluster,
so there is no peer here: each test times ours on the session's cluster (3 primaries with a replica each, started by
benchmarks/conftest.py) and ours on the session's single bench server, taking turns round by round as the other
suites do (``take_turns``), and the table at the end gives cluster / single. No row has a target. The layers are
built as in the Pub/Sub suite (benchmarks/pubsub/conftest.py), with the disconnect and reconnect notices set.

Every node of the cluster runs on this machine, sharing its cores with the client and the single server, so the
cluster cannot show more server capacity than one server. On a cluster the layer publishes with ``SPUBLISH`` to the
primary serving the name's slot and subscribes with ``SSUBSCRIBE`` there, one subscriber connection per node and
process; a worker channel's queue is hash-tagged into its channel's slot. The send+receive and round-trip rows
therefore show what cluster mode costs the client on one name: routing by slot, a subscriber per node.

What the group_send rows show follows from sharded Pub/Sub: a group is one Pub/Sub name, so a ``group_send`` is one
``SPUBLISH`` to the primary serving that name's slot, whatever the member count, as it is one ``PUBLISH`` on one
server. That node pushes the message to each process subscribed to the group (here ``PROCESSES`` layers, one
connection each; it also passes it over the cluster bus to its replicas, which have no subscribers here), and each
process hands it to its own members. The members' process channels are spread over every node's slots, but a group
message does not travel through them: the fan-out to 10, 100 or 1000 members happens in the processes, and the
cluster neither spreads nor multiplies the server's work with the member count. The rows measure that one publish
plus the processes' local delivery; how they scale from 10 to 1000 members is the client's work on both sides. The
last column counts, from each server's ``INFO commandstats``, the ``PUBLISH`` (single server) and ``SPUBLISH``
(each primary of the cluster) calls one group_send made. (A replica does not count what reaches it over the bus.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from checked_flows import produce_and_consume, send_receive_pairs

#: The worker (normal) channel of the throughput tests: each side's queue is under its own prefix.
WORKER_CHANNEL = "bench.queue"

SEQUENTIAL_PAIRS = 500
CONCURRENT_MESSAGES = 1000
THROUGHPUT_ROUNDS = 11
ROUND_TRIPS = 2000
#: Round trips one side runs before the other's turn: a round trip takes under a millisecond.
ROUND_TRIP_TURN = 25
#: Layers (server processes) whose process channels make up a group.
PROCESSES = 10
FAN_OUT_ROUNDS = 60
#: group_sends one side runs before the other's turn: each takes from under a millisecond to some milliseconds.
FAN_OUT_TURN = 5
#: The commands whose calls the last column counts (lower case, as INFO commandstats names them): the single
#: server takes PUBLISH, the cluster SPUBLISH.
COUNTED = ("publish", "spublish")

Run = Callable[..., Any]
Record = Callable[[str, Mapping[str, float]], None]
#: ``flow_turns(flow, channels, amount, rounds=)`` (benchmarks/conftest.py): a message flow timed in turns.
FlowTurns = Callable[..., Any]
#: ``fan_out_to_processes`` of benchmarks/conftest.py.
FanOut = Callable[..., None]
Layers = dict[str, Any]


def process_row(members: int) -> str:
    return f"3 group_send {members} process channels of {PROCESSES} layers"


#: The send+receive rows, by channel kind and flow.
THROUGHPUT_ROWS = {
    ("process", "sequential"): "1a send+receive process sequential",
    ("process", "concurrent"): "1b send+receive process concurrent",
    ("worker", "sequential"): "4a send+receive worker sequential",
    ("worker", "concurrent"): "4b send+receive worker concurrent",
}

#: Row name of the table -> its unit and whether a higher figure is the better one.
ROWS: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(THROUGHPUT_ROWS.values(), ("messages/s", True)),
    "1c client CPU per process message": ("us", False),
    "2 process round trip p50": ("us", False),
    "2 process round trip p99": ("us", False),
    process_row(10): ("deliveries/s", True),
    process_row(100): ("deliveries/s", True),
    process_row(1000): ("deliveries/s", True),
}


@pytest.fixture(scope="session")
def report(cluster_report: Any) -> Any:
    """This module's table (it replaces the Pub/Sub suite's ``report`` here, so ``record`` files into it)."""
    return cluster_report(
        "pubsub_cluster", subject="Pub/Sub layer", rows=ROWS, calls="PUBLISH single | SPUBLISH by node"
    )


@pytest.fixture
def layers(cluster_layers: Layers) -> Layers:
    """A layer on the cluster and one on the single server (``cluster_layers``), for the fixtures that take
    ``layers``."""
    return cluster_layers


def channels_of(run: Run, layers: Layers, kind: str) -> dict[str, str]:
    """A channel of ``kind`` for each side, by side: a new process channel, or the worker channel."""
    if kind == "process":
        return {side: str(run(layer.new_channel())) for side, layer in layers.items()}
    return dict.fromkeys(layers, WORKER_CHANNEL)


# 1 and 4. send+receive throughput ---------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 1 send+receive sequential")
@pytest.mark.parametrize("kind", ["process", "worker"])
def test_cluster_send_receive_sequential(
    flow_turns: FlowTurns, run: Run, layers: Layers, record: Record, kind: str
) -> None:
    turns = flow_turns(
        send_receive_pairs, channels_of(run, layers, kind), SEQUENTIAL_PAIRS, rounds=THROUGHPUT_ROUNDS
    )
    if turns.timed:
        record(THROUGHPUT_ROWS[kind, "sequential"], turns.rate(SEQUENTIAL_PAIRS))


@pytest.mark.benchmark(group="cluster 1 send+receive concurrent")
@pytest.mark.parametrize("kind", ["process", "worker"])
def test_cluster_send_receive_concurrent(
    flow_turns: FlowTurns, run: Run, layers: Layers, record: Record, kind: str
) -> None:
    turns = flow_turns(
        produce_and_consume, channels_of(run, layers, kind), CONCURRENT_MESSAGES, rounds=THROUGHPUT_ROUNDS
    )
    if turns.timed:
        record(THROUGHPUT_ROWS[kind, "concurrent"], turns.rate(CONCURRENT_MESSAGES))
        if kind == "process":
            record("1c client CPU per process message", turns.cpu_per(CONCURRENT_MESSAGES))


# 2. process-channel round trip ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 2 process round trip")
def test_cluster_process_round_trip(process_round_trips: Callable[..., None]) -> None:
    process_round_trips(rounds=ROUND_TRIPS, turn=ROUND_TRIP_TURN)


# 3. group_send ----------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="cluster 3 group_send to process channels")
@pytest.mark.parametrize("members", [10, 100, 1000])
def test_cluster_group_send_process_channels(fan_out_to_processes: FanOut, members: int) -> None:
    fan_out_to_processes(
        members,
        processes=PROCESSES,
        row=process_row(members),
        rounds=FAN_OUT_ROUNDS,
        turn=FAN_OUT_TURN,
        counted=COUNTED,
    )
