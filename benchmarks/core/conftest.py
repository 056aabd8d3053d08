"""Fixtures and the ratio table of the core layer's benchmarks: ours and channels_redis, one server, one process.

Each benchmark runs one side (``side`` is a test parameter) on an event loop of its own, on the session's
server, under a prefix of its own. The figures are filed in the ``core`` report, which prints ours / peer per
target of issue #5 at the end of the session and marks each target met or not. Targets are reported, never
asserted: a benchmark fails only when the layer delivers something wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer

from servers.process import ValkeyProcess

T = TypeVar("T")

OURS, PEER = "ours", "channels_redis"
SIDES = [OURS, PEER]

#: Queue capacity of every layer here: large enough that no benchmark meets ChannelFull, the same on both sides.
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


#: Row name of the ratio table -> its target (issue #5); the numbers in the names keep the table in issue order.
TARGETS: dict[str, Target] = {
    "1a send+receive sequential": Target("messages/s", True, ratio=5.0),
    "1b send+receive concurrent": Target("messages/s", True, ratio=5.0),
    "2 process round trip p50": Target("us", False, ratio=1 / 3),
    "2 process round trip p99": Target("us", False),
    "3 group_send 100 process channels": Target("deliveries/s", True, ratio=3.0),
    "3 group_send 100 normal channels": Target("deliveries/s", True, ratio=3.0),
    "4 backlog drain 2000": Target("messages/s", True, ratio=5.0),
    "5 client CPU per message": Target("us", False, ratio=1 / 4, decimals=1),
    "6 soak memory growth": Target("KiB", False, below=1024.0, decimals=1),
    "6 soak keys left": Target("keys", False, below=1.0),
}


def _row(group: str, ours: dict[str, float], peer: dict[str, float]) -> dict[str, Any]:
    target = TARGETS[group]
    mine, theirs = ours["value"], peer["value"]
    # Figures with an absolute target (memory growth, keys left) sit near zero on both sides: no ratio for them.
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
    ("target of issue #5", 34, lambda row: row["group"]),
    ("unit", 12, lambda row: row["unit"]),
    ("ours", 12, lambda row: _figure(row, "ours")),
    ("channels_redis", 14, lambda row: _figure(row, "peer")),
    ("ours/peer", 9, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
    ("target", 14, lambda row: row["target"]),
    ("met", 4, lambda row: {True: "yes", False: "NO", None: "-"}[row["met"]]),
]


@pytest.fixture(scope="session")
def core_report(ratio_report: Callable[..., Any]) -> Any:
    return ratio_report(
        "core",
        title="core layer: ours vs channels_redis 4, same server, same process (targets of issue #5)",
        columns=COLUMNS,
        row=_row,
        file_env="CORE_RATIOS_FILE",
    )


@pytest.fixture
def record(core_report: Any, side: str) -> Callable[[str, float], None]:
    """``record(row, value)``: file the side under test's figure for a row of the table (a name of TARGETS)."""

    def file(row: str, value: float) -> None:
        if row not in TARGETS:
            raise ValueError(f"no target named {row!r}; the rows are {sorted(TARGETS)}")
        core_report.record(row, side, value=value)

    return file


@pytest.fixture
def measuring(request: pytest.FixtureRequest) -> bool:
    """Whether this run compares figures (``--benchmark-enable``, as ``hatch run bench:run`` passes it).

    Tests that measure without the ``benchmark`` fixture (the soak) file their figures only then, so that a
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
def make_layer(
    run: Callable[[Awaitable[Any]], Any], valkey_server: ValkeyProcess, side: str
) -> Iterator[Callable[..., Any]]:
    """``make_layer(**config)``: a layer of ``side`` under a fresh prefix; flushed and closed after the test."""
    made: list[Any] = []

    def make(**config: Any) -> Any:
        config.setdefault("capacity", CAPACITY)
        config.setdefault("prefix", f"bench-{uuid.uuid4().hex[:8]}-{side}-")
        if side == OURS:
            layer: Any = ValkeyChannelLayer(hosts=[valkey_server.url()], **config)
        elif side == PEER:
            layer = RedisChannelLayer(hosts=[valkey_server.url("redis")], **config)
        else:
            raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")
        made.append(layer)
        return layer

    yield make
    for layer in made:
        run(layer.flush())
        if isinstance(layer, ValkeyChannelLayer):
            run(layer.close_pools())  # the peer's flush closes its pools itself


@pytest.fixture
def layer(make_layer: Callable[..., Any]) -> Any:
    """A layer of the side under test with the benchmark settings."""
    return make_layer()
