"""``channels-valkey serve``: the development server starts, says where it is, and goes away without a trace.

Each test runs the command as a child process in a session of its own (as a terminal would run it, but out of
reach of a Ctrl-C meant for pytest), reads what it prints, uses the server, signals the command, and then checks
with psutil and a connection attempt that no valkey-server is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import valkey

from channels_valkey.core import ValkeyChannelLayer

from servers.process import ValkeyProcess, free_port, wait_until

#: Longest the command may take to print its URL (an interpreter start and a server start, on a busy machine).
START_TIMEOUT = 30.0
#: Longest the command may take to stop its server and exit after a signal.
STOP_TIMEOUT = 20.0


class Serve:
    """``python -m channels_valkey.cli serve ...`` in a new session, with its output read as it comes."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "channels_valkey.cli", "serve", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        #: The valkey-server PID, once a test has asked the server for it.
        self.server_pid: int | None = None

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._stdout.put(line.rstrip("\n"))
        self._stdout.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def line(self, timeout: float = START_TIMEOUT) -> str:
        """The next line of stdout; fails if the command ends first or prints nothing for ``timeout`` seconds."""
        try:
            line = self._stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"serve printed nothing for {timeout} s; stderr so far: {self.stderr}"
            ) from None
        if line is None:
            self.process.wait(timeout=STOP_TIMEOUT)
            raise AssertionError(f"serve ended with status {self.process.returncode}: {self.stderr}")
        return line

    def lines_through(self, last: str) -> list[str]:
        """Lines of stdout up to and including the first one equal to ``last``."""
        lines = [self.line()]
        while lines[-1] != last:
            lines.append(self.line())
        return lines

    def signal(self, signum: int) -> int:
        """Send ``signum`` to the command and return its exit status."""
        os.kill(self.process.pid, signum)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def wait(self) -> int:
        return self.process.wait(timeout=STOP_TIMEOUT)

    def printed(self) -> list[str]:
        """Every line of stdout not read yet, once the command has ended."""
        self.process.wait(timeout=STOP_TIMEOUT)
        lines = []
        while (line := self._stdout.get(timeout=STOP_TIMEOUT)) is not None:
            lines.append(line)
        return lines

    @property
    def stderr(self) -> str:
        if self.process.poll() is not None:
            self._readers[1].join(timeout=STOP_TIMEOUT)
        return "".join(self._stderr)

    def close(self) -> None:
        """Stop the command if a test left it running (then its server too, if need be), and close the pipes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        if self.server_pid is not None and psutil.pid_exists(self.server_pid):
            server = psutil.Process(self.server_pid)
            if "valkey-server" in server.name():
                server.kill()
        for reader in self._readers:
            reader.join(timeout=STOP_TIMEOUT)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Serve]]:
    """``serve("--port", "0")``: start the command; whatever a test leaves running is stopped afterwards."""
    started: list[Serve] = []

    def start(*argv: str) -> Serve:
        command = Serve(*argv)
        started.append(command)
        return command

    yield start
    for command in started:
        command.close()


def valkey_servers_on(port: int) -> list[int]:
    """PIDs of live valkey-server processes listening on ``port`` (they show ``host:port`` as their title)."""
    title = re.compile(rf":{port}\b")
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE or process.info["name"] != "valkey-server":
            continue
        if title.search(" ".join(process.info["cmdline"] or [])):
            found.append(process.pid)
    return found


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie that its new parent has not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def server_pid(url: str) -> int:
    with valkey.Valkey.from_url(url, socket_timeout=5) as client:
        return int(client.info("server")["process_id"])


async def round_trip(layer: ValkeyChannelLayer) -> dict[str, Any]:
    try:
        await layer.send("serve.check", {"type": "hello"})
        return await asyncio.wait_for(layer.receive("serve.check"), 10)
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_serves_until_a_stop_signal_and_leaves_nothing_behind(
    serve: Callable[..., Serve], stop_signal: signal.Signals
) -> None:
    port = free_port()
    command = serve("--port", str(port))

    url = command.line()
    assert url == f"valkey://127.0.0.1:{port}"
    snippet = command.lines_through("}")
    with valkey.Valkey.from_url(url, socket_timeout=5) as client:
        client.set("serve-check", "kept")
        assert client.get("serve-check") == b"kept"
    command.server_pid = server_pid(url)
    assert valkey_servers_on(port) == [command.server_pid]

    # The settings printed are Python a user can paste, and a layer made from them works on this server.
    settings: dict[str, Any] = {}
    exec("\n".join(snippet), settings)
    default = settings["CHANNEL_LAYERS"]["default"]
    assert default["BACKEND"] == "channels_valkey.core.ValkeyChannelLayer"
    assert default["CONFIG"] == {"hosts": [url]}
    assert asyncio.run(round_trip(ValkeyChannelLayer(**default["CONFIG"], prefix="serve-test"))) == {
        "type": "hello"
    }

    assert command.signal(stop_signal) == 0
    wait_until(lambda: not valkey_servers_on(port), timeout=10, message=f"no valkey-server on port {port}")
    assert process_gone(command.server_pid)
    assert refuses_connections(port)
    assert "server stopped" in command.stderr


def test_a_second_signal_does_not_cut_the_shutdown_short(serve: Callable[..., Serve]) -> None:
    port = free_port()
    command = serve("--port", str(port))
    command.server_pid = server_pid(command.line())
    os.kill(command.process.pid, signal.SIGINT)
    os.kill(command.process.pid, signal.SIGTERM)
    assert command.wait() == 0, command.stderr
    wait_until(lambda: not valkey_servers_on(port), timeout=10, message=f"no valkey-server on port {port}")
    assert "Traceback" not in command.stderr


def test_json_password_and_maxmemory(serve: Callable[..., Serve]) -> None:
    command = serve("--port", "0", "--json", "--password", "s3cr@t!", "--maxmemory", "64MB")
    document = json.loads("\n".join(command.lines_through("}")))
    url = document["url"]
    port = int(url.rsplit(":", 1)[1])
    assert url == f"valkey://:s3cr%40t%21@127.0.0.1:{port}"
    assert document["channel_layers"]["default"]["CONFIG"] == {"hosts": [url]}
    command.server_pid = document["pid"]
    assert valkey_servers_on(port) == [document["pid"]]

    with pytest.raises(valkey.AuthenticationError), valkey.Valkey(port=port, socket_timeout=5) as anonymous:
        anonymous.ping()
    with valkey.Valkey.from_url(url, socket_timeout=5) as client:
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}

    # Stopping needs the password too (the server's SHUTDOWN): the process must still go at once.
    assert command.signal(signal.SIGTERM) == 0
    wait_until(lambda: not valkey_servers_on(port), timeout=10, message=f"no valkey-server on port {port}")


def test_a_server_that_stops_on_its_own_ends_the_command(serve: Callable[..., Serve]) -> None:
    port = free_port()
    command = serve("--port", str(port))
    url = command.line()
    command.server_pid = server_pid(url)
    with valkey.Valkey.from_url(url, socket_timeout=5) as client:
        client.shutdown(nosave=True)
    assert command.wait() == 1
    assert f"pid {command.server_pid}) stopped on its own" in command.stderr


@pytest.fixture(params=["listener", "valkey"])
def busy_port(request: pytest.FixtureRequest) -> Iterator[tuple[int, ValkeyProcess | None]]:
    """A port taken by a plain TCP listener that never answers, or by another Valkey server (then also given)."""
    if request.param == "valkey":
        other: ValkeyProcess = request.getfixturevalue("valkey_server")
        yield other.port, other
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1], None


def test_a_port_in_use_fails_with_its_number(
    serve: Callable[..., Serve], busy_port: tuple[int, ValkeyProcess | None]
) -> None:
    port, other = busy_port
    servers_before = valkey_servers_on(port)
    run_id = other.info("server")["run_id"] if other is not None else None
    command = serve("--port", str(port))
    assert command.wait() == 1
    assert f"port {port} on 127.0.0.1 is already in use" in command.stderr
    assert command.printed() == []
    assert valkey_servers_on(port) == servers_before
    if other is not None:
        assert other.info("server")["run_id"] == run_id  # still there: the command never talked to it


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--maxmemory", "lots"], "'lots' is not a memory size"),
        (["--maxmemory", "0"], "'0' is not a memory size"),
        (["--port", "70000"], "'70000' is not a port"),
        (["--password", "two words"], "the password must be printable ASCII without spaces"),
        (["--bind", "0.0.0.0"], "--bind 0.0.0.0 without --password"),
    ],
)
def test_bad_options_fail_before_a_server_starts(
    serve: Callable[..., Serve], argv: list[str], named: str
) -> None:
    port = free_port()
    command = serve("--port", str(port), *argv) if "--port" not in argv else serve(*argv)
    assert command.wait() == 2
    assert named in command.stderr
    assert command.printed() == []
    assert not valkey_servers_on(port)
