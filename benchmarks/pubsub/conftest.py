"""Fixtures and the ratio table of the Pub/Sub layer's benchmarks: ours and channels_redis, one server, one process.

Each benchmark runs one side (``side`` is a test parameter) on an event loop of its own, on the session's
server, under a prefix of its own. The figures are filed in the ``pubsub`` report, which prints ours / peer per
target of issue #6 at the end of the session and marks each target met or not. Targets are reported, never
asserted: a benchmark fails only when the layer delivers something wrong.

Ours is imported when a layer of ours is first made, not when this file is collected, so the peer's half of the
suite runs even in a checkout where ``channels_valkey.pubsub`` does not hold the layer yet (``-k channels_redis``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from servers.process import ValkeyProcess

T = TypeVar("T")

OURS, PEER = "ours", "channels_redis"
SIDES = [OURS, PEER]

#: Local buffer capacity of every layer here: large enough that no benchmark meets it. Ours honours it, the peer
#: accepts it and keeps unbounded queues.
CAPACITY = 10_000


@dataclass(frozen=True)
class Target:
    """A figure the issue sets a target for, and how to tell whether ours meets it.

    ``ratio``: ours / peer must be at least this (``higher_is_better``) or at most this (otherwise).
    ``below``: ours alone must be under this (for figures with an absolute target, such as memory growth).
    """

    unit: str
    higher_is_better: bool
    ratio: float | None = None
    below: float | None = None
    #: How many decimals the figures show with.
    decimals: int = 0

    def describe(self) -> str:
        if self.ratio is not None:
            return f"{'>=' if self.higher_is_better else '<='} {self.ratio:.2f}"
        if self.below is not None:
            return f"ours < {self.below:g}"
        return "-"

    def met(self, ours: float, ratio: float | None) -> bool | None:
        if self.ratio is not None:
            if ratio is None:
                return None
            return ratio >= self.ratio if self.higher_is_better else ratio <= self.ratio
        if self.below is not None:
            return ours < self.below
        return None


#: Row name of the ratio table -> its target (issue #6); the numbers in the names keep the table in issue order.
#: Normal channels have no target: ours carries them on a queue so that each message reaches one process, the
#: peer publishes them to every process that listens, so the two do different work.
TARGETS: dict[str, Target] = {
    "1a send+receive process sequential": Target("messages/s", True, ratio=1.5),
    "1b send+receive process concurrent": Target("messages/s", True, ratio=1.5),
    "1c send+receive normal sequential": Target("messages/s", True),
    "1d send+receive normal concurrent": Target("messages/s", True),
    "2 process round trip p50": Target("us", False, ratio=2 / 3),
    "2 process round trip p99": Target("us", False),
    "3 group_send to 10 process channels": Target("deliveries/s", True, ratio=1.0),
    "3 group_send to 100 process channels": Target("deliveries/s", True, ratio=1.0),
    "3 group_send to 1000 process channels": Target("deliveries/s", True, ratio=1.0),
    "4 client CPU per message": Target("us", False, decimals=1),
    "5 churn memory growth": Target("KiB", False, below=1024.0, decimals=1),
    "5 churn Pub/Sub channels left": Target("channels", False, below=1.0),
}


def _row(group: str, ours: dict[str, float], peer: dict[str, float]) -> dict[str, Any]:
    target = TARGETS[group]
    mine, theirs = ours["value"], peer["value"]
    # Figures with an absolute target (memory growth, channels left) sit near zero on both sides: no ratio.
    ratio = mine / theirs if theirs and target.below is None else None
    return {
        "group": group,
        "unit": target.unit,
        "ours": mine,
        "peer": theirs,
        "ratio": ratio,
        "target": target.describe(),
        "met": target.met(mine, ratio),
    }


def _figure(row: dict[str, Any], side: str) -> str:
    return f"{row[side]:,.{TARGETS[row['group']].decimals}f}"


COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    ("target of issue #6", 37, lambda row: row["group"]),
    ("unit", 12, lambda row: row["unit"]),
    ("ours", 12, lambda row: _figure(row, "ours")),
    ("channels_redis", 14, lambda row: _figure(row, "peer")),
    ("ours/peer", 9, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
    ("target", 14, lambda row: row["target"]),
    ("met", 4, lambda row: {True: "yes", False: "NO", None: "-"}[row["met"]]),
]


@pytest.fixture(scope="session")
def pubsub_report(ratio_report: Callable[..., Any]) -> Any:
    return ratio_report(
        "pubsub",
        title="Pub/Sub layer: ours vs channels_redis 4, same server, same process (targets of issue #6)",
        columns=COLUMNS,
        row=_row,
        file_env="PUBSUB_RATIOS_FILE",
    )


@pytest.fixture
def record(pubsub_report: Any, side: str) -> Callable[[str, float], None]:
    """``record(row, value)``: file the side under test's figure for a row of the table (a name of TARGETS)."""

    def file(row: str, value: float) -> None:
        if row not in TARGETS:
            raise ValueError(f"no target named {row!r}; the rows are {sorted(TARGETS)}")
        pubsub_report.record(row, side, value=value)

    return file


@pytest.fixture
def measuring(request: pytest.FixtureRequest) -> bool:
    """Whether this run compares figures (``--benchmark-enable``, as ``hatch run bench:run`` passes it).

    Tests that measure without the ``benchmark`` fixture (the churn) file their figures only then, so that a
    plain ``pytest benchmarks`` run, which only checks that the benchmarks work, leaves the ratio file alone.
    """
    disabled = request.config.getoption("benchmark_disable") and not request.config.getoption(
        "benchmark_enable"
    )
    return not disabled


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every benchmark that takes ``side`` runs once per side, ours first, under the same group.
    if "side" in metafunc.fixturenames:
        metafunc.parametrize("side", SIDES)


# Running one side ----------------------------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for the test (the tests are synchronous: pytest-benchmark times plain calls)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        # What asyncio.Runner does on exit (it is Python 3.11+; the workspace supports 3.10).
        loop.run_until_complete(_cancel_the_rest())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def _cancel_the_rest() -> None:
    """Cancel every task still on the running loop, and wait until they have ended."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    """``run(coroutine)``: its result, on the test's loop (``run_until_complete`` costs ~13 us a call here)."""
    return loop.run_until_complete


@pytest.fixture
def prefix(side: str) -> str:
    """The prefix of the test's layers: every channel and group name they put on the server starts with it.

    Known outside the event loop, unlike the peer's ``layer.prefix``, which needs a running loop to be read.
    """
    return f"bench-{uuid.uuid4().hex[:8]}-{side}-"


def layer_class(side: str) -> Any:
    """The Pub/Sub layer class of ``side``."""
    if side == OURS:
        from channels_valkey.pubsub import ValkeyPubSubChannelLayer

        return ValkeyPubSubChannelLayer
    if side == PEER:
        return RedisPubSubChannelLayer
    raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")


@pytest.fixture
def make_layer(
    run: Callable[[Awaitable[Any]], Any], valkey_server: ValkeyProcess, side: str, prefix: str
) -> Iterator[Callable[..., Any]]:
    """``make_layer(**config)``: a layer of ``side`` under the test's prefix; flushed and closed after the test."""
    made: list[Any] = []

    def make(**config: Any) -> Any:
        config.setdefault("capacity", CAPACITY)
        config.setdefault("prefix", prefix)
        url = valkey_server.url() if side == OURS else valkey_server.url("redis")
        layer = layer_class(side)(hosts=[url], **config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        run(layer.flush())
        if side == OURS:
            run(layer.close_pools())  # the peer's flush closes its connections itself


@pytest.fixture
def layer(make_layer: Callable[..., Any]) -> Any:
    """A layer of the side under test with the benchmark settings."""
    return make_layer()
