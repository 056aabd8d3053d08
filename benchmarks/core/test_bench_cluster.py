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

import asyncio
import functools
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from channels_valkey.cli.measure.flows import (
    GROUP,
    MESSAGE,
    fan_out,
    produce_and_consume,
    send_receive_pairs,
)
from channels_valkey.core import ValkeyChannelLayer

from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess

#: The two sides of every comparison here: the one pytest-benchmark times first, then the one timed between its
#: rounds.
CLUSTER, SINGLE = "cluster", "single"

CHANNEL = "bench.queue"
#: Capacity of every layer here: large enough that no benchmark meets it (as in the core suite).
CAPACITY = 10_000

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

Run = Callable[..., Any]
Record = Callable[[str, Mapping[str, float]], None]
#: ``take_turns`` of benchmarks/conftest.py: it returns a ``Turns``.
TakeTurns = Callable[..., Any]
#: ``flow_turns(flow, channels, amount, rounds=)`` (benchmarks/conftest.py): a message flow timed in turns.
FlowTurns = Callable[..., Any]
Layers = dict[str, Any]
#: A member of a group: the layer (process) that receives for it, and its channel.
Member = tuple[Any, str]


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


# The report ---------------------------------------------------------------------------------------------------


def _row(group: str, cluster: Mapping[str, float], single: Mapping[str, float]) -> dict[str, Any]:
    unit, higher_is_better = ROWS[group]
    on_cluster, on_single = cluster["value"], single["value"]
    row: dict[str, Any] = {
        "group": group,
        "unit": unit,
        "single": on_single,
        "cluster": on_cluster,
        "ratio": on_cluster / on_single if on_single else None,
        "better": "higher" if higher_is_better else "lower",
    }
    if "calls" in single:
        row["calls single"] = int(single["calls"])
        row["calls cluster by node"] = sorted(
            (int(value) for name, value in cluster.items() if name.startswith("calls node ")), reverse=True
        )
    return row


def _calls(row: dict[str, Any]) -> str:
    if "calls single" not in row:
        return "-"
    return f"{row['calls single']} | {'+'.join(map(str, row['calls cluster by node']))}"


def _figure(row: dict[str, Any], side: str) -> str:
    return f"{row[side]:,.1f}" if row["unit"] == "us" else f"{row[side]:,.0f}"


_FIRST = "core layer (issue #8)"
COLUMNS = [
    (_FIRST, max(len(_FIRST), *(len(name) for name in ROWS)), lambda row: row["group"]),
    ("unit", 12, lambda row: row["unit"]),
    ("single server", 13, lambda row: _figure(row, "single")),
    ("cluster", 12, lambda row: _figure(row, "cluster")),
    ("cluster/single", 14, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
    ("better", 6, lambda row: row["better"]),
    ("EVALSHA single | by node", 24, _calls),
]


@pytest.fixture(scope="session")
def report(ratio_report: Any) -> Any:
    """This module's table (it replaces the core suite's ``report`` here, so ``record`` files into it)."""
    return ratio_report(
        "core_cluster",
        title="core layer: ours on a Valkey Cluster (3 primaries + 3 replicas) vs ours on one server, same run, "
        "same machine (no targets)",
        columns=COLUMNS,
        row=_row,
        file_env="CORE_CLUSTER_RATIOS_FILE",
        groups=list(ROWS),
        sides=(CLUSTER, SINGLE),
    )


# The layers ---------------------------------------------------------------------------------------------------


@pytest.fixture
def build(
    run: Run, valkey_server: ValkeyProcess, valkey_cluster: ValkeyCluster
) -> Iterator[Callable[[str], ValkeyChannelLayer]]:
    """``build(side)``: a layer on the cluster or on the single server, under the test's prefix of that side;
    flushed and closed after the test."""
    token = uuid.uuid4().hex[:8]
    made: dict[str, list[ValkeyChannelLayer]] = {CLUSTER: [], SINGLE: []}

    def make(side: str) -> ValkeyChannelLayer:
        if side not in made:
            raise ValueError(f"side must be {CLUSTER!r} or {SINGLE!r}, not {side!r}")
        hosts: list[Any] = [{"cluster": [valkey_cluster.url()]}] if side == CLUSTER else [valkey_server.url()]
        layer = ValkeyChannelLayer(hosts=hosts, prefix=f"bench-{token}-{side}-", capacity=CAPACITY)
        made[side].append(layer)
        return layer

    yield make
    for layers in made.values():
        if layers:
            run(layers[0].flush())  # the layers of one side share their prefix: one flush clears them all
        for layer in layers:
            run(layer.close_pools())


@pytest.fixture
def layers(build: Callable[[str], ValkeyChannelLayer]) -> Layers:
    """A layer on the cluster and one on the single server, in the order ``take_turns`` times them."""
    return {CLUSTER: build(CLUSTER), SINGLE: build(SINGLE)}


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


async def fan_out_across(sender: Any, members: Sequence[Member]) -> int:
    """One ``group_send`` from ``sender``, then every member receives on its own layer; how many came intact."""
    await sender.group_send(GROUP, MESSAGE)
    messages = await asyncio.gather(*(layer.receive(channel) for layer, channel in members))
    return sum(message == MESSAGE for message in messages)


def evalsha_calls(servers: Sequence[ValkeyProcess]) -> list[int]:
    """How many ``EVALSHA`` each server has run since it started."""
    return [int(server.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) for server in servers]


def calls_of_one_round(
    servers: Sequence[ValkeyProcess], one_round: Callable[[], int], wanted: int
) -> list[int]:
    """The ``EVALSHA`` calls each server ran during ``one_round()`` (a fan-out that must deliver ``wanted``)."""
    before = evalsha_calls(servers)
    delivered = one_round()
    if delivered != wanted:
        raise AssertionError(f"a group_send to {wanted} members delivered {delivered} intact")
    return [after - earlier for after, earlier in zip(evalsha_calls(servers), before, strict=True)]


def compare_fan_out(
    take_turns: TakeTurns,
    report: Any,
    servers: Mapping[str, Sequence[ValkeyProcess]],
    senders: Layers,
    one_round: Callable[[str], int],
    row: str,
    members: int,
) -> None:
    """Time ``one_round`` on both sides in turns, count the script calls of one more round, file the row."""
    turns = take_turns(senders, one_round, rounds=FAN_OUT_ROUNDS, turn=FAN_OUT_TURN, warmup=2)
    turns.check(members)
    calls = {
        side: calls_of_one_round(servers[side], functools.partial(one_round, side), members)
        for side in senders
    }
    if turns.timed:
        rates = turns.rate(members)
        report.record(row, SINGLE, value=rates[SINGLE], calls=sum(calls[SINGLE]))
        by_node = {f"calls node {index}": float(count) for index, count in enumerate(calls[CLUSTER])}
        report.record(row, CLUSTER, value=rates[CLUSTER], **by_node)


@pytest.fixture
def servers(valkey_server: ValkeyProcess, valkey_cluster: ValkeyCluster) -> dict[str, list[ValkeyProcess]]:
    """The servers that run each side's scripts: the single server, the cluster's primaries."""
    return {CLUSTER: valkey_cluster.primaries(), SINGLE: [valkey_server]}


@pytest.mark.benchmark(group="cluster 3 group_send to process channels")
@pytest.mark.parametrize("members", [100, 1000])
def test_cluster_group_send_process_channels(
    take_turns: TakeTurns,
    run: Run,
    build: Callable[[str], ValkeyChannelLayer],
    report: Any,
    servers: dict[str, list[ValkeyProcess]],
    members: int,
) -> None:
    processes = {side: [build(side) for _ in range(PROCESSES)] for side in (CLUSTER, SINGLE)}

    async def join(side: str) -> list[Member]:
        # Consumers spread over the processes in turn, as a load balancer would spread websockets.
        joined: list[Member] = []
        for index in range(members):
            layer = processes[side][index % PROCESSES]
            channel = await layer.new_channel()
            await layer.group_add(GROUP, channel)
            joined.append((layer, channel))
        return joined

    group = {side: run(join(side)) for side in processes}
    senders = {side: layers[0] for side, layers in processes.items()}
    compare_fan_out(
        take_turns,
        report,
        servers,
        senders,
        lambda side: run(fan_out_across(senders[side], group[side])),
        process_row(members),
        members,
    )


@pytest.mark.benchmark(group="cluster 3 group_send to normal channels")
def test_cluster_group_send_normal_channels(
    take_turns: TakeTurns, run: Run, layers: Layers, report: Any, servers: dict[str, list[ValkeyProcess]]
) -> None:
    members = 100
    channels = [f"bench.member{index}" for index in range(members)]

    async def join(layer: Any) -> None:
        for channel in channels:
            await layer.group_add(GROUP, channel)

    for layer in layers.values():
        run(join(layer))
    compare_fan_out(
        take_turns,
        report,
        servers,
        layers,
        lambda side: run(fan_out(layers[side], channels)),
        "3 group_send 100 normal channels",
        members,
    )
