"""Fixtures of the chat demo's tests: ``examples/chat/run.py`` as a real subprocess, and every process it starts.

The launcher runs in a session of its own, so the processes it starts (uvicorn's master, its workers and
multiprocessing's resource tracker) are found by session id; an embedded Valkey daemonizes into another session
and is found by asking it for its PID. After a stop, each of those processes must be gone. A zombie counts as gone:
it has exited, and only waits for its parent (here often PID 1, which may reap late) to collect it.
"""

from __future__ import annotations

import contextlib
import os
import re
import runpy
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import valkey

from servers.process import ValkeyProcess, wait_until

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "examples" / "chat"
RUN_PY = DEMO_DIR / "run.py"
LAYERS = ("core", "pubsub")
#: Seconds the launcher may take to print its URL line (Django imported in every worker, first page served).
START_TIMEOUT = 60.0
#: Seconds the launcher may take to exit after a signal, and every process it started to be gone after that.
STOP_TIMEOUT = 30.0
#: Longest wait for a message or a page element: generous, so only a lost message fails a test.
RECEIVE_TIMEOUT = 10.0

_URL_LINE = re.compile(
    r"Chat demo: (?P<url>http://\S+/)  \((?P<layer>\w+) layer, (?P<workers>\d+) workers?, Valkey (?P<valkey>.+)\)"
)


@dataclass(frozen=True)
class ProcessId:
    """A process named by PID and start time, so that a recycled PID is never mistaken for it."""

    pid: int
    started: int
    command: str

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        stat = _stat(pid)
        if stat is None:
            return None
        return cls(pid, int(stat[19]), _command(pid))

    def running(self) -> bool:
        """True while the process exists and has not exited (a zombie has)."""
        stat = _stat(self.pid)
        return stat is not None and int(stat[19]) == self.started and stat[0] not in ("Z", "X")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None if there is no such PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def session_processes(session: int) -> list[ProcessId]:
    """Every live process of the session ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        # Fields after the name: state, ppid, pgrp, session, ...
        if stat is not None and int(stat[3]) == session and stat[0] not in ("Z", "X"):
            process = ProcessId.of(int(entry.name))
            if process is not None:
                found.append(process)
    return found


def children_of(parent: int) -> list[ProcessId]:
    """The live child processes of ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and int(stat[1]) == parent and stat[0] not in ("Z", "X"):
                process = ProcessId.of(int(entry.name))
                if process is not None:
                    found.append(process)
    return found


@dataclass
class Demo:
    """One running ``run.py``: its URL line, its log, and the processes it started."""

    process: subprocess.Popen[str]
    log_file: Path
    url: str = ""
    layer: str = ""
    workers: int = 0
    valkey_urls: list[str] = field(default_factory=list)
    #: run.py, uvicorn and its workers, and the embedded server when there is one, seen once the page answered.
    started: list[ProcessId] = field(default_factory=list)
    embedded_server: ProcessId | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def ws_url(self, room: str) -> str:
        return self.url.replace("http://", "ws://", 1) + f"ws/chat/{room}/"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def channel_layer_settings(self) -> dict[str, Any]:
        """``CHANNEL_LAYERS["default"]`` as the demo's settings module builds it for this demo's layer and hosts.

        The module is run afresh with the variables run.py gives uvicorn, so a test reads the demo's real
        configuration (its prefix above all) instead of repeating it.
        """
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHAT_DEMO_LAYER", self.layer)
            patch.setenv("CHAT_DEMO_HOSTS", " ".join(self.valkey_urls))
            settings = runpy.run_path(str(DEMO_DIR / "chat_project" / "settings.py"))
        layer: dict[str, Any] = settings["CHANNEL_LAYERS"]["default"]
        return layer

    @staticmethod
    def group_of(room: str) -> str:
        """The Channels group the demo's consumer puts every connection to ``room`` in."""
        group_for = runpy.run_path(str(DEMO_DIR / "rooms" / "rules.py"))["group_for"]
        group: str = group_for(room)
        return group

    def uvicorn_master(self) -> ProcessId:
        masters = [child for child in children_of(self.pid) if "uvicorn" in child.command]
        if len(masters) != 1:
            raise AssertionError(f"expected one uvicorn child of run.py, found {masters}")
        return masters[0]

    def read_url_line(self, timeout: float) -> None:
        """Wait for the one line run.py prints on stdout and note what it says and what is running."""
        if self.process.stdout is None:
            raise AssertionError("run.py's stdout is not a pipe")
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise AssertionError(f"run.py printed no URL within {timeout:.0f}s; its log:\n{self.log()}")
        line = self.process.stdout.readline().rstrip("\n")
        found = _URL_LINE.fullmatch(line)
        if found is None:
            raise AssertionError(f"unexpected first line from run.py: {line!r}; its log:\n{self.log()}")
        self.url = found["url"]
        self.layer = found["layer"]
        self.workers = int(found["workers"])
        self.valkey_urls = found["valkey"].split(", ")
        self.started = session_processes(self.pid)

    def note_embedded_server(self) -> None:
        """Record the PID of the Valkey server named in the URL line (the one run.py started itself)."""
        with valkey.Valkey.from_url(self.valkey_urls[0], socket_timeout=5) as client:
            pid = int(client.info("server")["process_id"])
        self.embedded_server = ProcessId.of(pid)
        if self.embedded_server is None:
            raise AssertionError(f"the embedded server's PID {pid} is not running")

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Send ``signum`` to run.py and return its exit status."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"run.py still running {STOP_TIMEOUT:.0f}s after {signal.Signals(signum).name}; its log:\n{self.log()}"
            ) from None

    def leftovers(self) -> list[ProcessId]:
        """What is still running of what this demo started."""
        watched = [*self.started, *session_processes(self.pid)]
        if self.embedded_server is not None:
            watched.append(self.embedded_server)
        return sorted({process for process in watched if process.running()}, key=lambda process: process.pid)

    def assert_all_gone(self) -> None:
        try:
            wait_until(
                lambda: not self.leftovers(), timeout=STOP_TIMEOUT, message="the demo's processes to exit"
            )
        except TimeoutError:
            raise AssertionError(
                f"processes left behind: {self.leftovers()}; run.py's log:\n{self.log()}"
            ) from None

    def kill_everything(self) -> None:
        """At the end of every test: SIGKILL whatever a failed test left running, and close the pipe."""
        for process in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


def launch(log_dir: Path, *args: str, env: dict[str, str] | None = None) -> Demo:
    """Start ``run.py --port 0 ARGS`` in a session of its own, without reading its URL line yet."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"run-{time.monotonic_ns()}.log"
    environment = {key: value for key, value in os.environ.items() if key != "VALKEY_URL"}
    environment.update(env or {})
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(RUN_PY), "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=environment,
            text=True,
            start_new_session=True,
            cwd=REPO,
        )
    return Demo(process, log_file)


@pytest.fixture
def launch_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """``launch_demo("--layer", "pubsub", env={...})``: a running demo; whatever a test leaves running is killed."""
    launched: list[Demo] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Demo:
        demo = launch(tmp_path / "logs", *args, env=env)
        launched.append(demo)
        demo.read_url_line(START_TIMEOUT)
        return demo

    yield start
    for demo in launched:
        demo.kill_everything()


@pytest.fixture(scope="session", params=LAYERS)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _standalone: ValkeyProcess
) -> Iterator[Demo]:
    """The demo on one layer against the session's Valkey server, started once per session (per xdist worker).

    Teardown stops it with SIGINT, as Ctrl-C does, and checks that it exited 0 and left no process behind.
    """
    _standalone.ensure_running()
    demo = launch(
        tmp_path_factory.mktemp(f"demo-{request.param}"),
        "--layer",
        request.param,
        "--hosts",
        _standalone.url(),
    )
    try:
        demo.read_url_line(START_TIMEOUT)
        assert demo.layer == request.param
        yield demo
        status = demo.stop(signal.SIGINT)
        assert status == 0, f"run.py exited {status} after SIGINT; its log:\n{demo.log()}"
        demo.assert_all_gone()
    finally:
        demo.kill_everything()
