"""Fixtures of the command line tests: the command run in-process or as the installed program, and settings modules.

``run_cli("check", "--hosts", url)`` runs ``channels_valkey.cli.main.main`` in this process and returns
``(status, stdout, stderr)`` (a :class:`CliResult`, whose ``.json()`` parses stdout). ``run_cli_process`` does the
same through the ``channels-valkey`` script that the distribution installs, in a child process with a time limit.
Neither may be called from a running event loop (the commands run their own): async tests use
``await asyncio.to_thread(run_cli, ...)``. ``small_cluster`` is a Valkey Cluster of the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from channels_valkey.cli.main import main

from servers.cluster import ValkeyCluster, start_cluster

#: Longest a command may take in a child process before the test fails (no command should come near it).
PROCESS_TIMEOUT = 60.0


class CliResult(NamedTuple):
    """Exit status and output of one run of the command."""

    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run the command in this process: ``run_cli("check", "--json", ...)``."""

    def run(*argv: str) -> CliResult:
        capsys.readouterr()  # output of earlier steps is not this run's
        try:
            status = main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(status, out, err)

    return run


def entry_point() -> Path:
    """The ``channels-valkey`` script installed next to this interpreter."""
    script = Path(sys.executable).with_name("channels-valkey")
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: is the channels-valkey distribution installed?")
    return script


@pytest.fixture
def run_cli_process() -> Callable[..., CliResult]:
    """Run the installed ``channels-valkey`` program: ``run_cli_process("check", ..., env={...})``."""

    def run(*argv: str, env: dict[str, str] | None = None, timeout: float = PROCESS_TIMEOUT) -> CliResult:
        completed = subprocess.run(
            [str(entry_point()), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """A Valkey Cluster of this test's own, three primaries without replicas (quicker to start than
    ``private_cluster``): for ACL users on every node, and for a primary killed with no replica to take over."""
    cluster = start_cluster(tmp_path, "cluster", replicas_per_primary=0)
    yield cluster
    cluster.stop()


@pytest.fixture
def settings_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``settings_module({"default": {...}})`` writes a settings module whose ``CHANNEL_LAYERS`` is that dict and
    returns its dotted name; ``settings_module(source="...")`` writes the given Python source instead.

    The module lives in this test's tmp_path (put on sys.path) under a name no other test uses.
    """
    folder = tmp_path / "settings_modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    made: list[str] = []

    def make(layers: dict[str, Any] | None = None, *, source: str | None = None) -> str:
        name = f"cli_settings_{uuid.uuid4().hex[:12]}"
        text = source if source is not None else f"CHANNEL_LAYERS = {layers!r}\n"
        (folder / f"{name}.py").write_text(text)
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)
