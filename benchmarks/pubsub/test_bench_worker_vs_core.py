"""A worker channel of the Pub/Sub layer against a normal channel of the core layer (issue #15's target: >= 1.0).

Run: ``hatch run bench:run benchmarks/pubsub/test_bench_worker_vs_core.py``. Both layers now read such a channel
with the same reader (the connection package's ``QueueReader``: one ``BZMPOP`` per round of waiting receives) and
send with one script call on the shard's command lane, so they should carry as many messages; this table checks it.
Both run on the session's server, in this process, taking turns as the peer comparisons do (``flow_turns``), on
the checked flows of benchmarks/checked_flows.py. The concurrent flow's figure swings by a third from run to run on
this machine, for both layers alike (how the sends and the pops happen to share event-loop turns), which is why
the two are only ever compared within one run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from checked_flows import produce_and_consume, send_receive_pairs
from servers.process import ValkeyProcess

PUBSUB, CORE = "pubsub worker", "core normal"
#: Row name -> the flow it times and how many messages a round carries.
ROWS: dict[str, tuple[Callable[..., Any], int]] = {
    "1 send+receive sequential": (send_receive_pairs, 500),
    "2 send+receive concurrent": (produce_and_consume, 1000),
}
ROUNDS = 10
CHANNEL = "bench.worker"

Run = Callable[..., Any]
FlowTurns = Callable[..., Any]


def _row(group: str, pubsub: Mapping[str, float], core: Mapping[str, float]) -> dict[str, Any]:
    ratio = pubsub["value"] / core["value"] if core["value"] else None
    return {
        "group": group,
        "unit": "messages/s",
        "pubsub": pubsub["value"],
        "core": core["value"],
        "ratio": ratio,
        "met": None if ratio is None else ratio >= 1.0,
    }


COLUMNS = [
    ("Pub/Sub worker channel vs core (#15)", 36, lambda row: row["group"]),
    ("unit", 12, lambda row: row["unit"]),
    ("pubsub worker", 13, lambda row: f"{row['pubsub']:,.0f}"),
    ("core normal", 11, lambda row: f"{row['core']:,.0f}"),
    ("pubsub/core", 11, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
    ("target", 7, lambda row: ">= 1.00"),
    ("met", 4, lambda row: {True: "yes", False: "NO", None: "-"}[row["met"]]),
]


@pytest.fixture(scope="session")
def report(ratio_report: Callable[..., Any]) -> Any:
    return ratio_report(
        "pubsub_worker_vs_core",
        title="Pub/Sub worker channel vs the core layer's normal channel, same server, same process",
        columns=COLUMNS,
        row=_row,
        file_env="PUBSUB_WORKER_VS_CORE_RATIOS_FILE",
        groups=list(ROWS),
        sides=(PUBSUB, CORE),
    )


@pytest.fixture
def pair(run: Run, valkey_server: ValkeyProcess) -> Iterator[dict[str, Any]]:
    """Our two layers on the session's server, each under a prefix of its own; flushed and closed after."""
    from channels_valkey.core import ValkeyChannelLayer
    from channels_valkey.pubsub import ValkeyPubSubChannelLayer

    token = uuid.uuid4().hex[:8]
    # The capacity of every benchmark layer (CAPACITY in benchmarks/conftest.py): with the default 100, a sender
    # running ahead of its receiver on a loaded machine met ChannelFull in the concurrent flow.
    options = {"hosts": [valkey_server.url()], "capacity": 10_000}
    layers = {
        PUBSUB: ValkeyPubSubChannelLayer(prefix=f"bench-{token}-w", **options),
        CORE: ValkeyChannelLayer(prefix=f"bench-{token}-c", **options),
    }
    yield layers
    for layer in layers.values():
        run(layer.flush())
        run(layer.close_pools())


@pytest.mark.benchmark(group="worker channel vs core")
@pytest.mark.parametrize("row", list(ROWS))
def test_worker_channel_against_the_core_layer(
    flow_turns: FlowTurns, pair: dict[str, Any], report: Any, row: str
) -> None:
    flow, amount = ROWS[row]
    turns = flow_turns(flow, CHANNEL, amount, rounds=ROUNDS, pair=pair)
    if turns.timed:
        for side, value in turns.rate(amount).items():
            report.record(row, side, value=value)
