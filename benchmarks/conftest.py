"""What every benchmark suite shares: a Valkey server for the session, ratio tables printed at the end, and the
way the layer suites run one side of a comparison.

A suite files the figures of both sides (ours and channels_redis) under a group with a :class:`RatioReport` from
the ``ratio_report`` fixture; at the end of the session each report prints one row per group where both sides ran,
and writes the same rows as JSON under .benchmarks/ (where pytest-benchmark keeps its own files), for comparing
runs. ``benchmarks/`` is not on ``sys.path``, so the suites reach all this through fixtures, not imports.

The layer suites (core, pubsub) set a target per row (``target_report``), run every benchmark that takes ``side``
once per side, each on an event loop of its own (``run``), with layers made by ``make_layer`` from the suite's
``layer_classes`` fixture, under a prefix of their own. Targets are reported, never asserted: a benchmark fails only
when a layer delivers something wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from servers.process import ValkeyProcess
from servers.topologies import start_standalone

OURS, PEER = "ours", "channels_redis"
SIDES = [OURS, PEER]

T = TypeVar("T")

#: The figures one side filed for one group, by name.
Figures = dict[str, float]
#: Builds a table row from a group's name and the figures of ours and of the peer.
RowBuilder = Callable[[str, Figures, Figures], dict[str, Any]]


#: A column of a printed table: header, width, and how a row shows in it. The first column is aligned left, the
#: others right.
Column = tuple[str, int, Callable[[dict[str, Any]], str]]


class RatioReport:
    """Ours and the peer, group by group: figures filed during the run, a table and a JSON file at the end."""

    def __init__(
        self,
        title: str,
        path: Path,
        columns: Sequence[Column],
        row: RowBuilder,
        groups: Sequence[str] | None = None,
    ) -> None:
        self.title = title
        #: The only groups figures may be filed under, when the report has a fixed set of rows.
        self.groups = list(groups) if groups is not None else None
        self.path = path
        self.columns = list(columns)
        self._row = row
        self._figures: dict[str, dict[str, Figures]] = {}

    def record(self, group: str, side: str, **figures: float) -> None:
        """File ``side``'s figures for ``group`` (a later call for the same group and side replaces them)."""
        if side not in (OURS, PEER):
            raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")
        if self.groups is not None and group not in self.groups:
            raise ValueError(f"no row named {group!r} in {self.title!r}; the rows are {sorted(self.groups)}")
        self._figures.setdefault(group, {})[side] = figures

    def rows(self) -> list[dict[str, Any]]:
        """One row per group that has both sides, in group order."""
        return [
            self._row(group, sides[OURS], sides[PEER])
            for group, sides in sorted(self._figures.items())
            if OURS in sides and PEER in sides
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
    """``ratio_report(name, title=, columns=, row=, file_env=, groups=None)``: the session's report ``name``, made on
    first use; with ``groups``, figures may only be filed under those.

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
    ) -> RatioReport:
        report = _REPORTS.get(name)
        if report is None:
            path = Path(os.environ.get(file_env, f".benchmarks/{name}-ratios.json"))
            report = _REPORTS[name] = RatioReport(title, path, columns, row, groups)
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
def record(report: RatioReport, side: str) -> Callable[[str, float], None]:
    """``record(row, value)``: file the side under test's figure for a row of the suite's ``report``."""

    def file(row: str, value: float) -> None:
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
    # Every benchmark that takes ``side`` runs once per side, ours first, under the same group (unless it lists
    # the sides itself, as the serializer benchmarks do).
    parametrized = {
        name.strip()
        for marker in metafunc.definition.iter_markers("parametrize")
        for name in (marker.args[0].split(",") if isinstance(marker.args[0], str) else marker.args[0])
    }
    if "side" in metafunc.fixturenames and "side" not in parametrized:
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
    """The prefix of the test's layers: every key and channel name they put on the server starts with it.

    Known outside the event loop, unlike the peer's ``layer.prefix``, which needs a running loop to be read.
    """
    return f"bench-{uuid.uuid4().hex[:8]}-{side}-"


#: Capacity of every layer here: large enough that no benchmark meets it, the same on both sides.
CAPACITY = 10_000


@pytest.fixture
def make_layer(
    run: Callable[[Awaitable[Any]], Any],
    valkey_server: ValkeyProcess,
    side: str,
    prefix: str,
    layer_classes: Callable[[], tuple[type, type]],
) -> Iterator[Callable[..., Any]]:
    """``make_layer(**config)``: a layer of ``side`` under the test's prefix; flushed and closed after the test.

    ``layer_classes`` is the suite's: it returns (our class, the peer's class), importing ours only when a layer
    is made, so the peer's half of a suite runs even where ours does not import.
    """
    made: list[Any] = []

    def make(**config: Any) -> Any:
        config.setdefault("capacity", CAPACITY)
        config.setdefault("prefix", prefix)
        ours, peer = layer_classes()
        if side == OURS:
            layer = ours(hosts=[valkey_server.url()], **config)
        elif side == PEER:
            layer = peer(hosts=[valkey_server.url("redis")], **config)
        else:
            raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")
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
