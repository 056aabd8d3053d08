"""What every benchmark suite shares: a Valkey server for the session, and ratio tables printed at the end.

A suite files the figures of both sides (ours and channels_redis) under a group with a :class:`RatioReport` from
the ``ratio_report`` fixture; at the end of the session each report prints one row per group where both sides ran,
and writes the same rows as JSON under .benchmarks/ (where pytest-benchmark keeps its own files), for comparing
runs. ``benchmarks/`` is not on ``sys.path``, so the suites reach all this through fixtures, not imports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from servers.process import ValkeyProcess
from servers.topologies import start_standalone

OURS, PEER = "ours", "channels_redis"

#: The figures one side filed for one group, by name.
Figures = dict[str, float]
#: Builds a table row from a group's name and the figures of ours and of the peer.
RowBuilder = Callable[[str, Figures, Figures], dict[str, Any]]


#: A column of a printed table: header, width, and how a row shows in it. The first column is aligned left, the
#: others right.
Column = tuple[str, int, Callable[[dict[str, Any]], str]]


class RatioReport:
    """Ours and the peer, group by group: figures filed during the run, a table and a JSON file at the end."""

    def __init__(self, title: str, path: Path, columns: Sequence[Column], row: RowBuilder) -> None:
        self.title = title
        self.path = path
        self.columns = list(columns)
        self._row = row
        self._figures: dict[str, dict[str, Figures]] = {}

    def record(self, group: str, side: str, **figures: float) -> None:
        """File ``side``'s figures for ``group`` (a later call for the same group and side replaces them)."""
        if side not in (OURS, PEER):
            raise ValueError(f"side must be {OURS!r} or {PEER!r}, not {side!r}")
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
    """``ratio_report(name, title=, columns=, row=, file_env=)``: the session's report ``name``, made on first use.

    Its JSON goes to ``.benchmarks/{name}-ratios.json``, or to the path in the environment variable ``file_env``.
    """

    def get(
        name: str, *, title: str, columns: Sequence[Column], row: RowBuilder, file_env: str
    ) -> RatioReport:
        report = _REPORTS.get(name)
        if report is None:
            path = Path(os.environ.get(file_env, f".benchmarks/{name}-ratios.json"))
            report = _REPORTS[name] = RatioReport(title, path, columns, row)
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
