"""``channels-valkey top``: a live view of one layer's servers, refreshed every ``--interval`` seconds.

Each refresh shows per shard the server's memory, clients and commands per second, the busiest channels (queued
messages, age of the oldest, growth per second since the previous refresh) and the largest groups, found as
``inspect`` finds them (``SCAN`` under ``--max-keys``, never ``KEYS``). On a terminal the view is redrawn in place;
elsewhere each refresh is printed as plain text, a blank line between two; ``--json`` prints one JSON object per
refresh (JSON Lines). A shard that fails is an error row and the view goes on. Ctrl-C (or SIGTERM, SIGHUP) ends it
with exit status 0, as does the end of ``--iterations``; 2 when the options or settings are wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from typing import Any, Protocol, TextIO

from channels_valkey.cli.embedded import stop_on_termination
from channels_valkey.cli.inventory import add_max_keys_argument
from channels_valkey.cli.screen import Screen
from channels_valkey.cli.shards import open_shards
from channels_valkey.cli.snapshots import Snapshot, snapshot_json, snapshot_lines, take_snapshot
from channels_valkey.cli.targets import (
    Target,
    TargetError,
    add_target_arguments,
    positive_seconds,
    resolve_target,
)

DEFAULT_INTERVAL = 2.0
DEFAULT_LIMIT = 10


def at_least_one(text: str) -> int:
    """argparse type of ``--limit`` and ``--iterations``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


class View(Protocol):
    """Where the refreshes go: a terminal redrawn in place, plain text, or JSON Lines."""

    def show(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


class JsonLinesView:
    """One JSON object per refresh, on a line of its own, flushed at once for the script reading it."""

    def __init__(self, stream: TextIO, target: Target, limit: int) -> None:
        self.stream, self.target, self.limit = stream, target, limit

    def show(self, snapshot: Snapshot) -> None:
        document = snapshot_json(snapshot, self.target, self.limit)
        self.stream.write(json.dumps(document, separators=(",", ":"), default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class PlainView:
    """Each refresh as plain text (no escape sequences), a blank line between two: for pipes, files and logs."""

    def __init__(self, stream: TextIO, target: Target, args: argparse.Namespace) -> None:
        self.stream, self.target, self.args = stream, target, args

    def show(self, snapshot: Snapshot) -> None:
        lines = snapshot_lines(
            snapshot, self.target, self.args.limit, self.args.max_keys, _heading(snapshot, self)
        )
        self.stream.write(("\n" if snapshot.number > 1 else "") + "\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class ScreenView(PlainView):
    """Each refresh drawn over the previous one on the terminal."""

    def __init__(self, stream: TextIO, target: Target, args: argparse.Namespace) -> None:
        super().__init__(stream, target, args)
        self.screen = Screen(stream)
        self.screen.open()

    def show(self, snapshot: Snapshot) -> None:
        heading = _heading(snapshot, self) + ", Ctrl-C to quit"
        self.screen.draw(snapshot_lines(snapshot, self.target, self.args.limit, self.args.max_keys, heading))

    def close(self) -> None:
        self.screen.close()


def _heading(snapshot: Snapshot, view: PlainView) -> str:
    moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.timestamp))
    target = view.target
    return (
        f"{target.layer} layer, prefix {target.prefix!r} ({target.source}): {moment}, "
        f"every {view.args.interval:g} s"
    )


def _view(args: argparse.Namespace, target: Target) -> View:
    if args.json:
        return JsonLinesView(sys.stdout, target, args.limit)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return ScreenView(sys.stdout, target, args)
    return PlainView(sys.stdout, target, args)


async def _watch(target: Target, args: argparse.Namespace, view: View) -> None:
    """Refresh until ``--iterations`` are done or the task is cancelled (Ctrl-C); connections close either way."""
    try:
        async with open_shards(target.specs, target.instance.policy) as slots:
            previous: Snapshot | None = None
            while True:
                started = time.monotonic()
                previous = await take_snapshot(slots, target, args.max_keys, previous)
                view.show(previous)
                if args.iterations is not None and previous.number >= args.iterations:
                    return
                await asyncio.sleep(max(0.0, started + args.interval - time.monotonic()))
    finally:
        await target.instance.close_pools()


def run(args: argparse.Namespace) -> int:
    """Show the live view until Ctrl-C or the end of ``--iterations``; return the exit status."""
    try:
        target = resolve_target(args)
    except TargetError as error:
        print(f"channels-valkey top: {error}", file=sys.stderr)
        return 2
    view: View | None = None
    # Signal handlers can only be set in the main thread; called from another, Ctrl-C is that thread's caller's.
    in_main_thread = threading.current_thread() is threading.main_thread()
    try:
        with stop_on_termination() if in_main_thread else contextlib.nullcontext():
            view = _view(args, target)
            asyncio.run(_watch(target, args, view))
    except KeyboardInterrupt:
        pass  # Ctrl-C, SIGTERM or SIGHUP: the way a live view is meant to end
    except BrokenPipeError:
        # The reader went away (``top --json | head -1``): stop quietly, and keep Python from failing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if view is not None:
            view.close()
    return 0


def register(commands: Any) -> None:
    """Add ``top`` to the sub-commands."""
    parser = commands.add_parser(
        "top",
        help="a live view of a layer's servers: busiest channels, groups, memory, clients, commands/s",
        description="Refresh every --interval seconds a view of one layer's servers: per shard (per primary of a "
        "Valkey Cluster) memory, clients and commands per second from INFO; the busiest channels with their "
        "queued messages, oldest message and growth per second; the largest groups. On a terminal the view is "
        "redrawn in place until Ctrl-C; elsewhere each refresh is printed as text, or as one JSON object per line "
        "with --json. Keys are found with SCAN, never KEYS. Exit status: 0, 2 when the options or the settings "
        "are wrong.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between two refreshes (default: {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--limit",
        type=at_least_one,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show the N busiest channels and the N largest groups (default: {DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "--iterations",
        type=at_least_one,
        metavar="N",
        help="stop after N refreshes (default: until Ctrl-C)",
    )
    add_max_keys_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per refresh, one per line")
    parser.set_defaults(run=run)
