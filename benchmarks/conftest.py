"""What every benchmark suite shares: a Valkey server (and a Valkey Cluster) for the session, ratio tables printed
at the end, and the way the layer suites compare the two sides.

A suite files the figures of both sides (ours and channels_redis, unless the report names other sides, such as
ours on a cluster and ours on one server) under a group with a :class:`RatioReport` from the ``ratio_report``
fixture; at the end of the session each report prints one row per group where both sides ran, and writes the same
rows as JSON under .benchmarks/ (where pytest-benchmark keeps its own files), for comparing runs. The suites reach
all this through fixtures; the one module they import is ``checked_flows`` (``benchmarks/`` is on pytest's
``pythonpath``): the message flows, whose messages carry sequence numbers so that each flow checks that what arrived
is exactly what was sent, in order, and whose every receive has a timeout.

The layer suites (core, pubsub) set a target per row (``target_report``) and run each test on an event loop of its
own (``run``), with layers built from the suite's ``layer_classes`` fixture, each side under a prefix of its own.
A timed comparison takes ``layers`` (one of each side) and ``take_turns``, which runs the rounds of the two sides
in alternating blocks inside the one test: on this 2-core machine the speed drifts by tens of percent over
minutes, so two sides timed minutes apart, in separate tests, gave ratios that moved from 3.7 to 6.3 between runs.
The few tests that must measure one side at a time (memory figures, which cannot be told apart when two layers
share the process) take ``side`` and run once per side. Targets are reported, never asserted: a benchmark fails
only when a layer delivers something wrong (a message lost, duplicated, reordered or garbled, or server keys left
behind by the soak).

``--bench-quick`` (``hatch run bench:quick``, which CI runs) plays every comparison for :data:`QUICK_ROUNDS` rounds
a side, untimed, and cuts the soak and churn down (the ``size`` fixture): it shows that each benchmark still runs and
delivers exactly what it sends, and reports no figures.

The layer suites' cluster comparisons (``test_bench_cluster.py``) put our layer on the session's Valkey Cluster
against our layer on the single server, with the fixtures of the last section: ``cluster_report``,
``cluster_layers``, ``build_on``, and ``compare_fan_out`` / ``fan_out_to_processes``, which also count the calls
of a command that one group_send made on each server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from checked_flows import (
    GROUP,
    BareRoundTrip,
    Fan,
    Stream,
    check_rooms,
    fan_out,
    join_rooms,
    round_trip,
    send_to_rooms,
    windowed,
)
from servers.cluster import ValkeyCluster, start_cluster
from servers.process import ValkeyProcess
from servers.topologies import SentinelGroup, start_standalone

OURS, PEER = "ours", "channels_redis"
SIDES = [OURS, PEER]

T = TypeVar("T")

#: Rounds each side runs of every comparison in quick mode (``--bench-quick``).
QUICK_ROUNDS = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-quick",
        action="store_true",
        help=f"run every benchmark for {QUICK_ROUNDS} rounds a side, untimed, with the soak and churn cut down: "
        "checks that each benchmark runs and delivers exactly what it sends, and makes no timing claims",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("bench_quick") and config.getoption("benchmark_enable"):
        raise pytest.UsageError("--bench-quick times nothing: leave out --benchmark-enable")


@pytest.fixture(scope="session")
def quick(pytestconfig: pytest.Config) -> bool:
    """Whether this is a quick run (``--bench-quick``): a few untimed rounds, nothing compared or reported."""
    return bool(pytestconfig.getoption("bench_quick"))


@pytest.fixture(scope="session")
def size(quick: bool) -> Callable[..., int]:
    """``size(full, quick=n)``: how much of something (messages, consumers) a test moves: ``n`` in a quick run."""

    quick_run = quick

    def choose(full: int, *, quick: int) -> int:
        return quick if quick_run else full

    return choose


#: The figures one side filed for one group, by name.
Figures = dict[str, float]
#: Builds a table row from a group's name and the figures of the report's first side and of its second (by default
#: ours and the peer).
RowBuilder = Callable[[str, Figures, Figures], dict[str, Any]]


#: A column of a printed table: header, width, and how a row shows in it. The first column is aligned left, the
#: others right.
Column = tuple[str, int, Callable[[dict[str, Any]], str]]


class RatioReport:
    """Two sides (ours and the peer, unless ``sides`` names others), group by group: figures filed during the run,
    a table and a JSON file at the end."""

    def __init__(
        self,
        title: str,
        path: Path,
        columns: Sequence[Column],
        row: RowBuilder,
        groups: Sequence[str] | None = None,
        sides: Sequence[str] = (OURS, PEER),
    ) -> None:
        if len(sides) != 2 or sides[0] == sides[1]:
            raise ValueError(f"a report compares two distinct sides, not {list(sides)!r}")
        self.title = title
        #: The two sides compared, in the order the row builder takes their figures.
        self.sides = (sides[0], sides[1])
        #: The only groups figures may be filed under, when the report has a fixed set of rows.
        self.groups = list(groups) if groups is not None else None
        self.path = path
        self.columns = list(columns)
        self._row = row
        self._figures: dict[str, dict[str, Figures]] = {}

    def record(self, group: str, side: str, **figures: float) -> None:
        """File ``side``'s figures for ``group`` (a later call for the same group and side replaces them)."""
        if side not in self.sides:
            raise ValueError(f"side must be one of {list(self.sides)!r}, not {side!r}")
        if self.groups is not None and group not in self.groups:
            raise ValueError(f"no row named {group!r} in {self.title!r}; the rows are {sorted(self.groups)}")
        self._figures.setdefault(group, {})[side] = figures

    def rows(self) -> list[dict[str, Any]]:
        """One row per group that has both sides, in group order."""
        first, second = self.sides
        return [
            self._row(group, sides[first], sides[second])
            for group, sides in sorted(self._figures.items())
            if first in sides and second in sides
        ]

    def lines(self, rows: list[dict[str, Any]]) -> list[str]:
        """The table as text: a header line, then one line per row."""

        def line(cells: list[str]) -> str:
            return " ".join(
                cell.ljust(width) if index == 0 else cell.rjust(width)
                for index, (cell, (_, width, _)) in enumerate(zip(cells, self.columns, strict=True))
            )

        return [
            line([header for header, _, _ in self.columns]),
            *(line([text(row) for _, _, text in self.columns]) for row in rows),
        ]


_REPORTS: dict[str, RatioReport] = {}


@pytest.fixture(scope="session")
def ratio_report() -> Callable[..., RatioReport]:
    """``ratio_report(name, title=, columns=, row=, file_env=, groups=None, sides=(OURS, PEER))``: the session's
    report ``name``, made on first use; with ``groups``, figures may only be filed under those.

    Its JSON goes to ``.benchmarks/{name}-ratios.json``, or to the path in the environment variable ``file_env``.
    """

    def get(
        name: str,
        *,
        title: str,
        columns: Sequence[Column],
        row: RowBuilder,
        file_env: str,
        groups: Sequence[str] | None = None,
        sides: Sequence[str] = (OURS, PEER),
    ) -> RatioReport:
        report = _REPORTS.get(name)
        if report is None:
            path = Path(os.environ.get(file_env, f".benchmarks/{name}-ratios.json"))
            report = _REPORTS[name] = RatioReport(title, path, columns, row, groups, sides)
        return report

    return get


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for report in _REPORTS.values():
        rows = report.rows()
        if not rows:
            continue
        terminalreporter.section(report.title)
        for line in report.lines(rows):
            terminalreporter.write_line(line)
        report.path.parent.mkdir(parents=True, exist_ok=True)
        report.path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"ratios written to {report.path}")


# The server ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    # A short folder name, as in tests/conftest.py, so that unix socket paths would fit.
    server = start_standalone(tmp_path_factory.mktemp("srv", numbered=True), "bench")
    yield server
    server.stop()


@pytest.fixture
def valkey_server(_bench_server: ValkeyProcess) -> ValkeyProcess:
    """The session's Valkey server, started on first use; every layer on it writes under its own prefix."""
    _bench_server.ensure_running()
    return _bench_server


@pytest.fixture(scope="session")
def _bench_sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    # The topology of the test suite's: a primary, a replica and three Sentinels.
    group = SentinelGroup(tmp_path_factory.mktemp("sg", numbered=True)).start()
    yield group
    group.stop()


@pytest.fixture
def sentinel_group(_bench_sentinel_group: SentinelGroup) -> SentinelGroup:
    """The session's Sentinel group, started on first use (only the sync suites' Sentinel case needs it)."""
    return _bench_sentinel_group


@pytest.fixture
def collect_garbage_last() -> Iterator[None]:
    """Collect the garbage when the test's teardown ends, under the test's warning filters: asked for first, so
    that it runs after the layers' teardown. For a peer that leaves connections to the garbage collector, which
    would otherwise warn in whichever test runs next."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def _bench_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    # The topology of the test suite's cluster (tests/conftest.py): 3 primaries with a replica each.
    cluster = start_cluster(tmp_path_factory.mktemp("cls", numbered=True), "bench")
    yield cluster
    cluster.stop()


@pytest.fixture
def valkey_cluster(_bench_cluster: ValkeyCluster) -> ValkeyCluster:
    """The session's Valkey Cluster (3 primaries, 3 replicas on loopback), started on first use: only the suites
    that compare a cluster with one server pay for its few seconds of start-up."""
    _bench_cluster.ensure()
    return _bench_cluster


# Targets -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A figure an issue sets a target for, and how to tell whether ours meets it.

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


def _target_row(targets: Mapping[str, Target]) -> RowBuilder:
    def row(group: str, ours: Figures, peer: Figures) -> dict[str, Any]:
        target = targets[group]
        mine, theirs = ours["value"], peer["value"]
        # Figures with an absolute target (memory growth, keys left) sit near zero on both sides: no ratio.
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

    return row


def _target_columns(issue: int, targets: Mapping[str, Target]) -> list[Column]:
    def figure(row: dict[str, Any], side: str) -> str:
        return f"{row[side]:,.{targets[row['group']].decimals}f}"

    first = f"target of issue #{issue}"
    return [
        (first, max(len(first), *(len(name) for name in targets)), lambda row: row["group"]),
        ("unit", 12, lambda row: row["unit"]),
        ("ours", 12, lambda row: figure(row, "ours")),
        ("channels_redis", 14, lambda row: figure(row, "peer")),
        ("ours/peer", 9, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
        ("target", 14, lambda row: row["target"]),
        ("met", 4, lambda row: {True: "yes", False: "NO", None: "-"}[row["met"]]),
    ]


@pytest.fixture(scope="session")
def target_report(ratio_report: Callable[..., RatioReport]) -> Callable[..., RatioReport]:
    """``target_report(name, issue=, subject=, targets=)``: a ratio report with one row per target.

    ``targets`` maps each row name to the keyword arguments of a :class:`Target` (the suites cannot import it);
    the numbers that start the names keep the table in the issue's order. The JSON file's path can be set with
    the environment variable ``{NAME}_RATIOS_FILE``.
    """

    def get(name: str, *, issue: int, subject: str, targets: Mapping[str, Mapping[str, Any]]) -> RatioReport:
        built = {row: Target(**settings) for row, settings in targets.items()}
        return ratio_report(
            name,
            title=f"{subject}: ours vs channels_redis 4, same server, same process (targets of issue #{issue})",
            columns=_target_columns(issue, built),
            row=_target_row(built),
            file_env=f"{name.upper()}_RATIOS_FILE",
            groups=list(built),
        )

    return get


@pytest.fixture
def record(report: RatioReport) -> Callable[[str, Mapping[str, float]], None]:
    """``record(row, {side: value})``: file each named side's figure for a row of the suite's ``report``."""

    def file(row: str, values: Mapping[str, float]) -> None:
        for side, value in values.items():
            report.record(row, side, value=value)

    return file


@pytest.fixture
def measuring(request: pytest.FixtureRequest) -> bool:
    """Whether this run compares figures (``--benchmark-enable``, as ``hatch run bench:run`` passes it).

    Tests that measure without the ``benchmark`` fixture (soak, churn) file their figures only then, so that a
    plain ``pytest benchmarks`` run, which only checks that the benchmarks work, leaves the ratio file alone.
    """
    disabled = request.config.getoption("benchmark_disable") and not request.config.getoption(
        "benchmark_enable"
    )
    return not disabled


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A benchmark that takes ``side`` measures one side at a time (the soak and churn, whose memory figures
    # cannot be told apart when two layers run in one process at once): it runs once per side, ours first, under
    # the same group, unless it lists the sides itself, as the serializer benchmarks do.
    parametrized = {
        name.strip()
        for marker in metafunc.definition.iter_markers("parametrize")
        for name in (marker.args[0].split(",") if isinstance(marker.args[0], str) else marker.args[0])
    }
    if "side" in metafunc.fixturenames and "side" not in parametrized:
        metafunc.parametrize("side", SIDES)


# The layers ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new event loop, shut down as ``asyncio.Runner`` does on exit (it is Python 3.11+; the workspace supports
    3.10)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(_cancel_the_rest())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for the test (the tests are synchronous: pytest-benchmark times plain calls)."""
    with event_loop() as loop:
        yield loop


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
def prefixes() -> dict[str, str]:
    """The prefix of each side's layers in the test, by side: every key and channel name they put on the server
    starts with it.

    Known outside the event loop, unlike the peer's ``layer.prefix``, which needs a running loop to be read.
    """
    token = uuid.uuid4().hex[:8]
    return {side: f"bench-{token}-{side}-" for side in SIDES}


@pytest.fixture
def prefix(prefixes: dict[str, str], side: str) -> str:
    """The prefix of the side under test, in the tests that measure one side at a time."""
    return prefixes[side]


#: Capacity of every layer here: large enough that no benchmark meets it, the same on both sides.
CAPACITY = 10_000


@pytest.fixture
def build_layer(
    run: Callable[[Awaitable[Any]], Any],
    valkey_server: ValkeyProcess,
    prefixes: dict[str, str],
    layer_classes: Callable[[], tuple[type, type]],
) -> Iterator[Callable[..., Any]]:
    """``build_layer(side, hosts=None, **config)``: a layer of ``side`` under that side's prefix, on the session's
    server or on ``hosts`` (the same entries for both sides); flushed and closed after the test.

    ``layer_classes`` is the suite's: it returns (our class, the peer's class), importing ours only when a layer
    is made, so the peer's half of a suite runs even where ours does not import.
    """
    made: list[tuple[str, Any]] = []

    def build(side: str, hosts: list[Any] | None = None, **config: Any) -> Any:
        if side not in SIDES:
            raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")
        config.setdefault("capacity", CAPACITY)
        config.setdefault("prefix", prefixes[side])
        ours, peer = layer_classes()
        if side == OURS:
            layer = ours(hosts=hosts or [valkey_server.url()], **config)
        else:
            layer = peer(hosts=hosts or [valkey_server.url("redis")], **config)
        made.append((side, layer))
        return layer

    yield build
    for side, layer in made:
        run(flush_and_close(side, layer))


async def flush_and_close(side: str, layer: Any) -> None:
    """Flush ``layer`` (of ``side``) and close its connections on the running event loop."""
    await layer.flush()
    if side == OURS:
        await layer.close_pools()  # the peer's flush closes its connections itself


@pytest.fixture
def make_layers(build_layer: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """``make_layers(**config)``: a layer of each side with the same settings, by side."""

    def make(**config: Any) -> dict[str, Any]:
        return {side: build_layer(side, **config) for side in SIDES}

    return make


@pytest.fixture
def layers(make_layers: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A layer of each side with the benchmark settings, by side: the pair a timed comparison takes turns on."""
    return make_layers()


@pytest.fixture
def make_layer(build_layer: Callable[..., Any], side: str) -> Callable[..., Any]:
    """``make_layer(**config)``: a layer of the side under test, in the tests that measure one side at a time."""
    return functools.partial(build_layer, side)


@pytest.fixture
def layer(make_layer: Callable[..., Any]) -> Any:
    """A layer of the side under test with the benchmark settings."""
    return make_layer()


# Taking turns --------------------------------------------------------------------------------------------------


@dataclass
class Turns(Generic[T]):
    """What each side's timed rounds of one comparison took and returned, by side, in the order they ran."""

    #: Whether the rounds were timed (``--benchmark-enable``). If not, each side ran one round (or a few, in a
    #: quick run), to check that it works, and ``seconds`` holds nothing to compare.
    timed: bool
    #: The two sides, the one pytest-benchmark times first (ours, in a comparison with the peer).
    sides: tuple[str, str] = (OURS, PEER)
    #: Wall seconds of each round: pytest-benchmark's own for the first side, ``time.perf_counter()`` for the other.
    seconds: dict[str, list[float]] = field(init=False)
    #: The process's CPU seconds during each round (``time.process_time()``): the client's, the server runs apart.
    cpu: dict[str, list[float]] = field(init=False)
    #: What each round returned.
    results: dict[str, list[T]] = field(init=False)

    def __post_init__(self) -> None:
        self.seconds = {side: [] for side in self.sides}
        self.cpu = {side: [] for side in self.sides}
        self.results = {side: [] for side in self.sides}

    def check(self, wanted: T) -> None:
        """Fail unless both sides ran and every round of each returned ``wanted`` (how many came intact)."""
        for side, results in self.results.items():
            if not results:
                raise AssertionError(f"{side} ran no round")
            wrong = {index: result for index, result in enumerate(results) if result != wanted}
            if wrong:
                raise AssertionError(f"{side}: rounds returned {wrong} (round: result), not {wanted!r}")

    def rate(self, amount: float) -> dict[str, float]:
        """By side, ``amount`` per second of the median round, each round moving ``amount`` messages or deliveries."""
        return {side: amount / statistics.median(seconds) for side, seconds in self.seconds.items()}

    def cpu_per(self, amount: float) -> dict[str, float]:
        """By side, the client's CPU microseconds per message of the median round, each round moving ``amount``."""
        return {side: statistics.median(cpu) / amount * 1e6 for side, cpu in self.cpu.items()}


async def _settle(layer: Any) -> None:
    """Wait for the work ``layer`` still does in the background after its rounds (the peer's Pub/Sub layer is a
    proxy that finds its attributes on the running loop only, hence a coroutine)."""
    wait_received = getattr(layer, "wait_received", None)
    if wait_received is not None:
        await wait_received()


@pytest.fixture
def take_turns(
    benchmark: Any, run: Callable[[Awaitable[Any]], Any], quick: bool
) -> Callable[..., Turns[Any]]:
    """``take_turns(layers, one_round, rounds=, turn=1, warmup=0, before_round=None)``: the rounds of both sides
    of a comparison, timed in turns; a :class:`Turns`.

    ``layers`` maps the two sides to their layer: ours first and the peer second (as ``layers`` builds them), or
    any two sides in that order, such as ours on a cluster and ours on one server. ``one_round(side)`` does one
    round of work with ``layers[side]`` and returns what the test checks; ``before_round(side)``, if given,
    prepares each round, untimed. After ``warmup`` untimed rounds of each side, pytest-benchmark times ``rounds``
    rounds of the first side (``benchmark.pedantic``), and its ``setup`` and ``teardown`` hooks run as many rounds
    of the second in between, timed here: blocks of ``turn`` rounds of each side, in the order second, first,
    first, second, second, first..., so that neither side always runs right after the other, and rounds of the two
    sides that get compared ran seconds apart. After each block, the side that ran it finishes its background
    work (``wait_received``), untimed, so that it does not weigh on the other side's turn.

    Without ``--benchmark-enable`` nothing is timed: each side plays one round (a plain ``pytest benchmarks``
    run), or :data:`QUICK_ROUNDS` rounds in a quick run, the two sides taking turns round by round, to check that
    the work runs and delivers what it should.
    """

    def settle(layers: Mapping[str, Any], side: str) -> None:
        run(_settle(layers[side]))

    def take(
        layers: Mapping[str, Any],
        one_round: Callable[[str], T],
        *,
        rounds: int,
        turn: int = 1,
        warmup: int = 0,
        before_round: Callable[[str], object] | None = None,
    ) -> Turns[T]:
        if rounds < 1 or turn < 1 or warmup < 0:
            raise ValueError(
                f"rounds and turn must be 1 or more, warmup 0 or more; not {rounds}, {turn}, {warmup}"
            )
        if len(layers) != 2:
            raise ValueError(f"layers must map two sides to their layer, not {list(layers)!r}")
        timed_side, other = layers
        turns: Turns[T] = Turns(timed=benchmark.enabled, sides=(timed_side, other))

        def prepare(side: str) -> None:
            if before_round is not None:
                before_round(side)

        def play(side: str) -> T:
            # The same work around both sides' rounds, inside their timed span: the process_time calls and the
            # appends, on top of one_round.
            cpu_start = time.process_time()
            result = one_round(side)
            turns.cpu[side].append(time.process_time() - cpu_start)
            turns.results[side].append(result)
            return result

        def other_turn(block: int) -> None:
            for _ in range(min(turn, rounds - block * turn)):
                prepare(other)
                start = time.perf_counter()  # pytest-benchmark's default timer, which times the first side
                play(other)
                turns.seconds[other].append(time.perf_counter() - start)
            settle(layers, other)

        def before_timed() -> None:
            block, place = divmod(len(turns.results[timed_side]), turn)
            if place == 0 and block % 2 == 0:
                other_turn(block)
            prepare(timed_side)

        def after_timed() -> None:
            done = len(turns.results[timed_side])
            if done % turn == 0 or done == rounds:
                settle(layers, timed_side)
                block = (done - 1) // turn
                if block % 2 == 1:
                    other_turn(block)

        if not turns.timed:

            def play_untimed() -> None:
                for _ in range(min(rounds, QUICK_ROUNDS) if quick else 1):
                    for side in (other, timed_side):
                        prepare(side)
                        play(side)
                        settle(layers, side)

            benchmark.pedantic(play_untimed, rounds=1, iterations=1)  # disabled: it calls play_untimed once
            return turns
        for side in turns.sides:
            for _ in range(warmup):
                prepare(side)
                one_round(side)
            settle(layers, side)
        benchmark.pedantic(
            lambda: play(timed_side), setup=before_timed, teardown=after_timed, rounds=rounds, iterations=1
        )
        turns.seconds[timed_side] = list(benchmark.stats.stats.data)
        if len(turns.seconds[other]) != rounds or len(turns.seconds[timed_side]) != rounds:
            raise AssertionError(f"{rounds} rounds each expected, not {turns.seconds}")
        benchmark.extra_info[f"{other} median s"] = statistics.median(turns.seconds[other])
        benchmark.extra_info["turn"] = turn
        return turns

    return take


@pytest.fixture
def process_round_trips(
    take_turns: Callable[..., Turns[Any]],
    run: Callable[[Awaitable[Any]], Any],
    layers: dict[str, Any],
    record: Callable[[str, Mapping[str, float]], None],
    valkey_server: ValkeyProcess,
) -> Callable[..., None]:
    """``process_round_trips(rounds=, turn=, floor=False)``: that many process-channel round trips per side, in
    turns, and their p50 and p99 recorded (in us) under "2 process round trip p50" / "p99" (``pair`` and ``name``:
    other layers than the suite's pair, recorded under "{name} p50" / "p99").

    Latency is timed inside the event loop (``round_trip``), so the ~13 us of entering the loop for every round,
    which the benchmark table includes, stays out of the ratio. Each round trip's message carries the next number
    of its side's channel and must come back as sent (``round_trip`` raises otherwise).

    With ``floor=True``, a :class:`BareRoundTrip` on the session's server runs before each round, untimed by
    ``take_turns``, and its p50 in each side's turns is recorded under "{name} p50, a bare client (the floor)",
    each side's p50 less its floor under "{name} p50 above the floor": what the layer itself adds to a round trip.
    """

    def measure(
        *,
        rounds: int,
        turn: int,
        pair: dict[str, Any] | None = None,
        name: str = "2 process round trip",
        floor: bool = False,
    ) -> None:
        sides = layers if pair is None else pair
        streams = {side: Stream(layer, run(layer.new_channel())) for side, layer in sides.items()}
        floors: dict[str, list[float]] = {side: [] for side in sides}
        bare = None
        if floor:
            channel = f"bench.bare-round-trip.{uuid.uuid4().hex}".encode()
            # The payload is about as long as the layers' messages (MESSAGE and its number in msgpack).
            bare = run(BareRoundTrip.open(valkey_server.host, valkey_server.port, channel, bytes(100)))

        def one_round_trip(side: str) -> float:
            return float(run(round_trip(streams[side])))

        def floor_round_trip(side: str) -> None:
            floors[side].append(run(bare.round_trip()))

        try:
            turns = take_turns(
                sides,
                one_round_trip,
                rounds=rounds,
                turn=turn,
                warmup=50,
                before_round=None if bare is None else floor_round_trip,
            )
        finally:
            if bare is not None:
                bare.close()
        if turns.timed:
            latencies = turns.results
            record(f"{name} p50", {side: statistics.median(lat) * 1e6 for side, lat in latencies.items()})
            record(
                f"{name} p99",
                {side: statistics.quantiles(lat, n=100)[98] * 1e6 for side, lat in latencies.items()},
            )
            if bare is not None:
                floor_p50 = {side: statistics.median(floors[side]) for side in sides}
                record(
                    f"{name} p50, a bare client (the floor)",
                    {side: p50 * 1e6 for side, p50 in floor_p50.items()},
                )
                record(
                    f"{name} p50 above the floor",
                    {side: (statistics.median(latencies[side]) - floor_p50[side]) * 1e6 for side in sides},
                )

    return measure


@pytest.fixture
def bulk_group_sends(
    take_turns: Callable[..., Turns[Any]],
    run: Callable[[Awaitable[Any]], Any],
    layers: dict[str, Any],
    build_layer: Callable[..., Any],
    record: Callable[[str, Mapping[str, float]], None],
    benchmark: Any,
) -> Callable[..., None]:
    """``bulk_group_sends(groups=, members=, rounds=, rows=(bulk_row, loop_row, own_row))``: one message to each of
    ``groups`` groups (one member each, ``members`` process channels in all), by ours in one ``group_send_many``
    and by both sides in a loop of ``group_send``, in turns; groups per second of the sending recorded under
    ``bulk_row`` (ours: ``group_send_many``, the peer: its loop), ``loop_row`` (both loops) and ``own_row`` (ours:
    ``group_send_many``, in the peer's column our own loop: the ratio issue #17 sets its target on).

    The members are channels of a second layer of the same side, on an event loop of its own that runs only
    between the sends, to receive and check what each send delivered: as in a deployment, where a task sending to
    many groups runs in one process and the groups' members are websocket consumers in others. The server still
    publishes every message to a subscriber (or queues it for a member), but the members' receiving stays out of
    the timed sending (a Pub/Sub layer's subscriber on the sender's own loop would read the messages in the middle
    of it, adding the same work to both ways of sending and hiding the difference between them). Ours runs both
    ways in each of its rounds, so its two figures come from the same moments.
    """

    def measure(*, groups: int, members: int, rounds: int, rows: tuple[str, str, str]) -> None:
        ours, peer = layers
        with event_loop() as members_loop:
            on_members = members_loop.run_until_complete
            receivers = {side: build_layer(side) for side in layers}
            try:
                rooms = {
                    side: on_members(join_rooms(layer, receivers[side], groups, members))
                    for side, layer in layers.items()
                }

                def send(side: str, *, bulk: bool) -> float:
                    seconds = float(run(send_to_rooms(rooms[side], bulk=bulk)))
                    on_members(check_rooms(rooms[side]))
                    return seconds

                def one_round(side: str) -> tuple[float | None, float]:
                    bulk = send(side, bulk=True) if side == ours else None
                    return bulk, send(side, bulk=False)

                turns = take_turns(layers, one_round, rounds=rounds, warmup=1)
            finally:
                for side, layer in receivers.items():
                    on_members(flush_and_close(side, layer))
        if not turns.timed:
            return
        bulk = statistics.median(seconds for seconds, _ in turns.results[ours] if seconds is not None)
        loop = {
            side: statistics.median(seconds for _, seconds in results)
            for side, results in turns.results.items()
        }
        record(rows[0], {ours: groups / bulk, peer: groups / loop[peer]})
        record(rows[1], {side: groups / seconds for side, seconds in loop.items()})
        record(rows[2], {ours: groups / bulk, peer: groups / loop[ours]})
        benchmark.extra_info["group_send_many / our loop"] = loop[ours] / bulk

    return measure


@pytest.fixture
def sync_group_sends(
    take_turns: Callable[..., Turns[Any]],
    layers: dict[str, Any],
    record: Callable[[str, Mapping[str, float]], None],
    valkey_server: ValkeyProcess,
) -> Iterator[Callable[..., None]]:
    """``sync_group_sends(calls=, rounds=, rows=(a2s_row, sync_row, connections_row), member=, pair=, servers=)``:
    ``calls`` group_send calls per round from this thread, which runs no event loop (a Django view's, a Celery
    task's), each side in turns, with the test's ``layers`` or the layers of ``pair`` (on other hosts, whose
    ``servers`` are the ones whose new connections count: a Sentinel group's primary and Sentinels).

    Ours runs both ways in each of its rounds: ``async_to_sync(layer.group_send)`` (a new event loop per call) and
    ``layer.sync.group_send``; the peer has ``async_to_sync`` only. Calls per second are recorded under
    ``a2s_row`` (both sides' ``async_to_sync``) and ``sync_row`` (ours: ``layer.sync``, the peer: its
    ``async_to_sync``), and the server's new connections per ``async_to_sync`` call under ``connections_row``.
    With ``member`` the group has one member, a normal channel emptied before each round, so every call writes a
    message (the core layers); without, a group_send publishes to no subscriber (the Pub/Sub layers, whose members
    are the channels a process receives).
    """
    from asgiref.sync import async_to_sync

    used: list[dict[str, Any]] = []

    def measure(
        *,
        calls: int,
        rounds: int,
        rows: tuple[str, str, str],
        member: bool = True,
        pair: dict[str, Any] | None = None,
        servers: Sequence[ValkeyProcess] = (),
    ) -> None:
        measured = pair if pair is not None else layers
        used.append(measured)
        counted = list(servers) or [valkey_server]
        ours, peer = measured

        def accepted() -> int:
            # Each look opens a connection of its own on each server, which the next look counts: taken off here.
            return sum(int(server.info("stats")["total_connections_received"]) - 1 for server in counted)

        def timed_calls(call: Callable[..., Any]) -> tuple[float, int]:
            opened = accepted()
            start = time.perf_counter()
            for n in range(calls):
                call("bench-sync", {"type": "sync.call", "n": n})
            seconds = time.perf_counter() - start
            return seconds, accepted() - opened - len(counted)

        def one_round(side: str) -> tuple[tuple[float, int], tuple[float, int] | None]:
            layer = measured[side]
            via_loops = timed_calls(async_to_sync(layer.group_send))
            return via_loops, timed_calls(layer.sync.group_send) if side == ours else None

        def empty_member(side: str) -> None:
            async_to_sync(measured[side].flush)()
            async_to_sync(measured[side].group_add)("bench-sync", "bench-sync-member")

        before_round = empty_member if member else None
        turns = take_turns(measured, one_round, rounds=rounds, warmup=1, before_round=before_round)
        if not turns.timed:
            return
        a2s = {
            side: calls / statistics.median(seconds for (seconds, _), _ in results)
            for side, results in turns.results.items()
        }
        sync_api = calls / statistics.median(sync[0] for _, sync in turns.results[ours] if sync is not None)
        record(rows[0], a2s)
        record(rows[1], {ours: sync_api, peer: a2s[peer]})
        record(
            rows[2],
            {
                side: statistics.median(opened / calls for (_, opened), _ in results)
                for side, results in turns.results.items()
            },
        )

    yield measure
    for measured in used:
        measured[OURS].sync.close()


@pytest.fixture
def windowed_turns(
    take_turns: Callable[..., Turns[Any]],
    run: Callable[[Awaitable[Any]], Any],
    layers: dict[str, Any],
    build_layer: Callable[..., Any],
    record: Callable[[str, Mapping[str, float]], None],
) -> Callable[..., None]:
    """``windowed_turns(channels, count=, window=, rounds=, row=)``: another process's shape, in turns. A second
    layer instance of each side sends ``count`` messages to that side's channel in ``channels`` (ready to receive on
    the test's layer), never more than ``window`` ahead of what arrived; messages per second recorded under ``row``."""

    def measure(channels: Mapping[str, str], *, count: int, window: int, rounds: int, row: str) -> None:
        senders = {side: build_layer(side) for side in layers}
        streams = {side: Stream(layer, channels[side]) for side, layer in layers.items()}
        turns = take_turns(
            layers,
            lambda side: run(windowed(streams[side], senders[side], count, window)),
            rounds=rounds,
            warmup=1,
        )
        turns.check(count)
        if turns.timed:
            record(row, turns.rate(count))

    return measure


@pytest.fixture
def flow_turns(
    take_turns: Callable[..., Turns[Any]], run: Callable[[Awaitable[Any]], Any], layers: dict[str, Any]
) -> Callable[..., Turns[Any]]:
    """``flow_turns(flow, channels, amount, rounds=)``: a message flow of benchmarks/checked_flows.py
    (``flow(stream, amount)``, returning how many messages came as sent) run by both sides in turns, after one
    warm-up round each; every round must bring all ``amount`` messages, numbered in order over the whole test.
    ``channels`` is one channel name for both sides, or a name by side; ``pair`` replaces the test's ``layers``
    (layers built with other settings)."""

    def measure(
        flow: Callable[[Stream, int], Awaitable[int]],
        channels: str | Mapping[str, str],
        amount: int,
        *,
        rounds: int,
        pair: Mapping[str, Any] | None = None,
    ) -> Turns[Any]:
        sides = layers if pair is None else dict(pair)
        names = dict.fromkeys(sides, channels) if isinstance(channels, str) else channels
        streams = {side: Stream(layer, names[side]) for side, layer in sides.items()}
        turns = take_turns(sides, lambda side: run(flow(streams[side], amount)), rounds=rounds, warmup=1)
        turns.check(amount)
        return turns

    return measure


# Ours on a cluster vs ours on one server -------------------------------------------------------------------------
#
# The layer suites' cluster comparisons (issue #8; benchmarks/*/test_bench_cluster.py) have no peer, since
# channels_redis does not run on a cluster: each times our layer on the session's cluster against our layer on the
# single bench server, in turns. A module of that kind overrides ``report`` with ``cluster_report`` and ``layers``
# with ``cluster_layers``, so that ``record``, ``flow_turns`` and ``process_round_trips`` work on its two sides.

#: The sides of a cluster comparison: the one pytest-benchmark times first, then the one timed between its rounds.
CLUSTER, SINGLE = "cluster", "single"

#: A cluster comparison's rows: row name -> its unit and whether a higher figure is the better one.
ClusterRows = Mapping[str, tuple[str, bool]]


def _cluster_row(rows: ClusterRows) -> RowBuilder:
    def row(group: str, cluster: Figures, single: Figures) -> dict[str, Any]:
        unit, higher_is_better = rows[group]
        on_cluster, on_single = cluster["value"], single["value"]
        built: dict[str, Any] = {
            "group": group,
            "unit": unit,
            "single": on_single,
            "cluster": on_cluster,
            "ratio": on_cluster / on_single if on_single else None,
            "better": "higher" if higher_is_better else "lower",
        }
        if "calls" in single:
            built["calls single"] = int(single["calls"])
            built["calls cluster by node"] = sorted(
                (int(value) for name, value in cluster.items() if name.startswith("calls node ")),
                reverse=True,
            )
        return built

    return row


def _cluster_calls(row: dict[str, Any]) -> str:
    if "calls single" not in row:
        return "-"
    return f"{row['calls single']} | {'+'.join(map(str, row['calls cluster by node']))}"


def _cluster_figure(row: dict[str, Any], side: str) -> str:
    return f"{row[side]:,.1f}" if row["unit"] == "us" else f"{row[side]:,.0f}"


def _cluster_columns(subject: str, rows: ClusterRows, calls: str) -> list[Column]:
    first = f"{subject} (issue #8)"
    return [
        (first, max(len(first), *(len(name) for name in rows)), lambda row: row["group"]),
        ("unit", 12, lambda row: row["unit"]),
        ("single server", 13, lambda row: _cluster_figure(row, SINGLE)),
        ("cluster", 12, lambda row: _cluster_figure(row, CLUSTER)),
        ("cluster/single", 14, lambda row: "-" if row["ratio"] is None else f"{row['ratio']:.2f}"),
        ("better", 6, lambda row: row["better"]),
        (calls, len(calls), _cluster_calls),
    ]


@pytest.fixture(scope="session")
def cluster_report(ratio_report: Callable[..., RatioReport]) -> Callable[..., RatioReport]:
    """``cluster_report(name, subject=, rows=, calls=)``: a cluster comparison's report, one row per name of
    ``rows``: the single server's figure, the cluster's, cluster / single, and for the group_send rows the calls
    of the counted command each server made (``calls`` is that column's header). No row has a target.

    Its JSON goes to ``.benchmarks/{name}-ratios.json``, or to the path in ``{NAME}_RATIOS_FILE``.
    """

    def get(name: str, *, subject: str, rows: ClusterRows, calls: str) -> RatioReport:
        return ratio_report(
            name,
            title=f"{subject}: ours on a Valkey Cluster (3 primaries + 3 replicas) vs ours on one server, same run, "
            "same machine (no targets)",
            columns=_cluster_columns(subject, rows, calls),
            row=_cluster_row(rows),
            file_env=f"{name.upper()}_RATIOS_FILE",
            groups=list(rows),
            sides=(CLUSTER, SINGLE),
        )

    return get


@pytest.fixture
def build_on(
    run: Callable[[Awaitable[Any]], Any],
    valkey_server: ValkeyProcess,
    valkey_cluster: ValkeyCluster,
    layer_classes: Callable[[], tuple[Any, Any]],
) -> Iterator[Callable[[str], Any]]:
    """``build_on(side)``: our layer (the suite's class) on the cluster or on the single server, under the test's
    prefix of that side; flushed and closed after the test."""
    token = uuid.uuid4().hex[:8]
    made: dict[str, list[Any]] = {CLUSTER: [], SINGLE: []}

    def make(side: str) -> Any:
        if side not in made:
            raise ValueError(f"side must be {CLUSTER!r} or {SINGLE!r}, not {side!r}")
        hosts: list[Any] = [{"cluster": [valkey_cluster.url()]}] if side == CLUSTER else [valkey_server.url()]
        ours, _ = layer_classes()
        layer = ours(hosts=hosts, prefix=f"bench-{token}-{side}-", capacity=CAPACITY)
        made[side].append(layer)
        return layer

    yield make
    for layers in made.values():
        if layers:
            run(layers[0].flush())  # the layers of one side share their prefix: one flush clears them all
        for layer in layers:
            run(layer.close_pools())


@pytest.fixture
def cluster_layers(build_on: Callable[[str], Any]) -> dict[str, Any]:
    """A layer on the cluster and one on the single server, in the order ``take_turns`` times them."""
    return {CLUSTER: build_on(CLUSTER), SINGLE: build_on(SINGLE)}


@pytest.fixture
def cluster_servers(
    valkey_server: ValkeyProcess, valkey_cluster: ValkeyCluster
) -> dict[str, list[ValkeyProcess]]:
    """The servers that run each side's commands: the cluster's primaries, the single server."""
    return {CLUSTER: valkey_cluster.primaries(), SINGLE: [valkey_server]}


def command_calls(servers: Sequence[ValkeyProcess], commands: Sequence[str]) -> list[int]:
    """How many calls of ``commands`` (lower-case names, such as ``evalsha``) each server has run since it
    started, from its own ``INFO commandstats``."""
    counts = []
    for server in servers:
        stats = server.info("commandstats")
        counts.append(sum(int(stats.get(f"cmdstat_{command}", {}).get("calls", 0)) for command in commands))
    return counts


def calls_of_one_round(
    servers: Sequence[ValkeyProcess], commands: Sequence[str], one_round: Callable[[], int], wanted: int
) -> list[int]:
    """The calls of ``commands`` each server ran during ``one_round()`` (a fan-out that must deliver ``wanted``)."""
    before = command_calls(servers, commands)
    delivered = one_round()
    if delivered != wanted:
        raise AssertionError(f"a group_send to {wanted} members delivered {delivered} intact")
    return [after - earlier for after, earlier in zip(command_calls(servers, commands), before, strict=True)]


@pytest.fixture
def compare_fan_out(
    take_turns: Callable[..., Turns[Any]],
    report: RatioReport,
    cluster_servers: dict[str, list[ValkeyProcess]],
) -> Callable[..., None]:
    """``compare_fan_out(senders, one_round, row=, members=, rounds=, turn=, counted=)``: time ``one_round(side)``
    (a fan-out from ``senders[side]`` that must deliver ``members``) on both sides in turns, count the calls of the
    commands ``counted`` that one more round made on each server, and file the row with both."""

    def compare(
        senders: Mapping[str, Any],
        one_round: Callable[[str], int],
        *,
        row: str,
        members: int,
        rounds: int,
        turn: int,
        counted: Sequence[str],
    ) -> None:
        turns = take_turns(senders, one_round, rounds=rounds, turn=turn, warmup=2)
        turns.check(members)
        calls = {
            side: calls_of_one_round(
                cluster_servers[side], counted, functools.partial(one_round, side), members
            )
            for side in senders
        }
        if turns.timed:
            rates = turns.rate(members)
            report.record(row, SINGLE, value=rates[SINGLE], calls=sum(calls[SINGLE]))
            by_node = {f"calls node {index}": float(count) for index, count in enumerate(calls[CLUSTER])}
            report.record(row, CLUSTER, value=rates[CLUSTER], **by_node)

    return compare


@pytest.fixture
def fan_out_to_processes(
    run: Callable[[Awaitable[Any]], Any],
    build_on: Callable[[str], Any],
    compare_fan_out: Callable[..., None],
) -> Callable[..., None]:
    """``fan_out_to_processes(members, processes=, row=, rounds=, turn=, counted=)``: ``compare_fan_out`` of a
    group of ``members`` process channels made by ``processes`` layers of each side, as websocket consumers spread
    over that many server processes; the first layer sends."""

    def compare(
        members: int, *, processes: int, row: str, rounds: int, turn: int, counted: Sequence[str]
    ) -> None:
        layers = {side: [build_on(side) for _ in range(processes)] for side in (CLUSTER, SINGLE)}

        async def join(side: str) -> list[tuple[Any, str]]:
            # Consumers spread over the processes in turn, as a load balancer would spread websockets.
            joined: list[tuple[Any, str]] = []
            for index in range(members):
                layer = layers[side][index % processes]
                channel = await layer.new_channel()
                await layer.group_add(GROUP, channel)
                joined.append((layer, channel))
            return joined

        # One group_send from the first layer, then every member receives on its own layer.
        fans = {side: Fan(side_layers[0], run(join(side))) for side, side_layers in layers.items()}
        senders = {side: fan.sender for side, fan in fans.items()}
        compare_fan_out(
            senders,
            lambda side: run(fan_out(fans[side])),
            row=row,
            members=members,
            rounds=rounds,
            turn=turn,
            counted=counted,
        )

    return compare
