"""``channels-valkey top`` against real servers: redrawn in place in a pseudo-terminal until Ctrl-C, JSON Lines
whose counts and growth match the server, plain snapshots in a pipe, bad options, and a shard going down.

The command runs as a program (``python -m channels_valkey.cli top``) so that its terminal, its signals and its
exit status are the real ones. Every wait reads the program's output until a condition holds, with a timeout.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess
from servers.topologies import SentinelGroup

COMMAND = [sys.executable, "-m", "channels_valkey.cli", "top"]
#: Longest a test waits for the view to show something, or for the program to end.
WAIT = 20.0
#: The terminal's size in the pseudo-terminal tests.
ROWS, COLUMNS = 40, 160
HOME, ERASE_BELOW, SHOW_CURSOR = "\x1b[H", "\x1b[J", "\x1b[?25h"

Layer = ValkeyChannelLayer | ValkeyPubSubChannelLayer
LAYERS: dict[str, Callable[..., Layer]] = {"core": ValkeyChannelLayer, "pubsub": ValkeyPubSubChannelLayer}


def _environment() -> dict[str, str]:
    """This environment without a size the terminal would not have, and with a terminal type that takes ANSI."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    return env


async def _send(layer: Layer, channel: str, count: int) -> None:
    for number in range(count):
        await layer.send(channel, {"type": "test.message", "n": number})
    await layer.close_pools()


async def _flush(layer: Layer) -> None:
    await layer.flush()
    await layer.close_pools()


# In a pseudo-terminal -------------------------------------------------------------------------------------------


class Terminal:
    """The program in a pseudo-terminal of its own, which is its controlling terminal, as in a real shell."""

    def __init__(self, argv: list[str], rows: int = ROWS, columns: int = COLUMNS) -> None:
        self.controller, terminal = os.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                env=_environment(),
                start_new_session=True,
                # The new session takes the terminal, so that Ctrl-C typed there signals the program.
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
        finally:
            os.close(terminal)
        self.text = ""

    def read_until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Read what the program writes until ``condition()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"timed out after {timeout:.0f}s waiting for {what}; the terminal showed:\n{self.text}"
                )
            if not self._read(remaining):
                if condition():
                    return
                pytest.fail(f"the terminal closed before {what}; it showed:\n{self.text}")

    def _read(self, timeout: float) -> bool:
        """Read once, waiting up to ``timeout``; False once the program has closed the terminal."""
        ready, _, _ = select.select([self.controller], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.controller, 65536)
        except OSError:  # Linux: EIO once the last writer has closed the terminal
            return False
        self.text += chunk.decode("utf-8", "replace")
        return bool(chunk)

    def frames(self) -> list[list[str]]:
        """The complete frames drawn so far, each as its lines without escape sequences."""
        drawn = []
        for part in self.text.split(HOME)[1:]:
            if ERASE_BELOW not in part:
                continue  # still being written
            frame = part.split(ERASE_BELOW)[0].replace("\x1b[K", "").replace("\r", "")
            drawn.append(frame.split("\n")[:-1])
        return drawn

    def type(self, data: bytes) -> None:
        os.write(self.controller, data)

    def wait(self, timeout: float = WAIT) -> int:
        """The exit status, reading the terminal to its end meanwhile (a program blocked on a full one never ends)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0 and self._read(remaining):
            pass
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the program did not end within {timeout:.0f}s; the terminal showed:\n{self.text}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        os.close(self.controller)


def channel_cell(frame: list[str], channel: str, column: str) -> str | None:
    """The cell of ``column`` in the row of ``channel`` in the busiest-channels table of a frame."""
    header = next((line.split() for line in frame if line.startswith("shard  channel")), None)
    if header is None:
        return None
    for line in frame:
        cells = line.split()
        if len(cells) > 1 and cells[1] == channel:
            # "oldest" is two words ("1.2 s"), and comes after every column asked for here but growth.
            if column == "growth":
                return cells[-1]
            return cells[header.index(column)]
    return None


@pytest.mark.parametrize("layer_name", ["core", "pubsub"])
def test_a_terminal_view_refreshes_in_place_until_ctrl_c(
    valkey_server: ValkeyProcess, key_prefix: str, layer_name: str
) -> None:
    layer = LAYERS[layer_name](hosts=[valkey_server.url()], prefix=key_prefix)
    kind = "normal" if layer_name == "core" else "worker"
    asyncio.run(_send(layer, "chat.lobby", 3))
    terminal = Terminal(
        [
            *COMMAND,
            *("--hosts", valkey_server.url(), "--layer", layer_name, "--prefix", key_prefix),
            *("--interval", "0.2"),
        ]
    )
    try:

        def showing(count: str) -> bool:
            frames = terminal.frames()
            return bool(frames) and channel_cell(frames[-1], "chat.lobby", "messages") == count

        terminal.read_until(lambda: showing("3"), "chat.lobby with 3 messages")
        frame = terminal.frames()[-1]
        assert frame[0].startswith(f"{layer_name} layer, prefix {key_prefix!r} (--hosts): ")
        assert frame[0].endswith("every 0.2 s, Ctrl-C to quit")
        assert channel_cell(frame, "chat.lobby", "kind") == kind
        shard_row = next(line.split() for line in frame if line.startswith("0 "))
        assert shard_row[1] == valkey_server.url()
        assert shard_row[-1] == "ok"

        asyncio.run(_send(layer, "chat.lobby", 2))
        terminal.read_until(lambda: showing("5"), "chat.lobby with 5 messages on a later refresh")
        # The frame where the count changed says it grew.
        grown = next(
            frame for frame in terminal.frames() if channel_cell(frame, "chat.lobby", "messages") == "5"
        )
        growth = channel_cell(grown, "chat.lobby", "growth")
        assert growth is not None, grown
        assert growth.startswith("+"), grown
        # Every frame is drawn over the previous one: the screen is cleared once, then the cursor goes home.
        assert terminal.text.count("\x1b[2J") == 1
        assert len(terminal.frames()) >= 2

        terminal.type(b"\x03")  # Ctrl-C, as typed
        status = terminal.wait()
        assert status == 0, terminal.text
        assert "Traceback" not in terminal.text
        after_last_frame = terminal.text.rpartition(ERASE_BELOW)[2]
        assert SHOW_CURSOR in after_last_frame
        assert "\x1b[?1049h" not in terminal.text  # no alternate screen to leave
    finally:
        terminal.close()
        asyncio.run(_flush(layer))


def test_the_frame_fits_a_small_terminal(valkey_server: ValkeyProcess, key_prefix: str) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    asyncio.run(_send(layer, "a-channel-with-a-rather-long-name-that-a-narrow-terminal-cannot-show-whole", 1))
    rows, columns = 8, 50
    terminal = Terminal(
        [*COMMAND, "--hosts", valkey_server.url(), "--prefix", key_prefix, "--interval", "0.2"], rows, columns
    )
    try:
        terminal.read_until(lambda: bool(terminal.frames()), "a first frame")
        frame = terminal.frames()[0]
        # Within the terminal: a wrapped line or a scrolled screen would break the next redraw.
        assert len(frame) <= rows - 1
        assert all(len(line) <= columns for line in frame)
        assert frame[-1].startswith("(")
        assert "more lines" in frame[-1]
        terminal.type(b"\x03")
        assert terminal.wait() == 0
    finally:
        terminal.close()
        asyncio.run(_flush(layer))


# JSON Lines and plain text --------------------------------------------------------------------------------------


class Program:
    """The program with its stdout read line by line as it writes (stderr to a file)."""

    def __init__(self, argv: list[str], stderr: Path) -> None:
        self.stderr_path = stderr
        with stderr.open("w") as errors:
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=_environment()
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_document(self, timeout: float = WAIT) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line within {timeout:.0f}s; stderr: {self.stderr()}")
        if line is None:
            pytest.fail(f"the program ended (status {self.process.wait(WAIT)}); stderr: {self.stderr()}")
        document: dict[str, Any] = json.loads(line)
        return document

    def document_where(
        self, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
            document = self.next_document(remaining)
            if condition(document):
                return document

    def rest(self, timeout: float = WAIT) -> list[str]:
        """The lines written until the program ended."""
        self.process.wait(timeout)
        self.reader.join(timeout)
        rest = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return rest

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)
        self.reader.join(WAIT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*args: str) -> Program:
        started.append(Program([*COMMAND, *args], tmp_path / f"stderr-{len(started)}.txt"))
        return started[-1]

    yield start
    for one in started:
        one.close()


def _rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["channels"]}


def test_json_lines_counts_and_growth(
    program: Callable[..., Program], valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    url = valkey_server.url()
    layer = ValkeyChannelLayer(hosts=[url], prefix=key_prefix)

    async def fill() -> None:
        await layer.group_add("room", "chat.lobby")
        await layer.group_add("room", "chat.quiet")
        await layer.group_add("alone", "chat.quiet")
        await _send(layer, "chat.quiet", 1)
        await _send(layer, "chat.lobby", 3)

    asyncio.run(fill())
    try:
        top = program(
            *("--hosts", url, "--prefix", key_prefix, "--json"),
            *("--interval", "0.6", "--iterations", "5", "--limit", "2"),
        )
        first = top.next_document()
        # The first refresh: no growth yet; all of the prefix's channels, busiest first.
        assert [(row["name"], row["messages"], row["growth_per_second"]) for row in first["channels"]] == [
            ("chat.lobby", 3, None),
            ("chat.quiet", 1, None),
        ]
        assert first["channels_total"] == 2
        assert first["refresh"] == 1
        assert first["elapsed_seconds"] is None
        assert [(group["name"], group["members"]) for group in first["groups"]] == [("room", 2), ("alone", 1)]
        assert first["groups_total"] == 2
        (shard,) = first["shards"]
        assert shard["error"] is None
        assert shard["complete"] is True
        assert shard["memory_bytes"] > 0
        assert shard["clients"] >= 1
        assert shard["ops_per_sec"] >= 0
        assert (first["layer"], first["prefix"], first["source"]) == ("core", key_prefix, "--hosts")

        asyncio.run(_send(layer, "chat.lobby", 2))
        asyncio.run(_send(layer, "chat.new", 2))
        later = [top.next_document() for _ in range(4)]
        assert top.rest() == []
        assert top.process.returncode == 0
        assert "Traceback" not in top.stderr()
        with valkey_server.client() as client:
            on_server = {
                name: client.zcard(f"{key_prefix}{name}") for name in ("chat.lobby", "chat.new", "chat.quiet")
            }
    finally:
        asyncio.run(_flush(layer))

    documents = [first, *later]
    assert [document["refresh"] for document in documents] == [1, 2, 3, 4, 5]
    # Growth is the change of each queue over the seconds between two refreshes, both given in the document.
    for before, after in itertools.pairwise(documents):
        assert after["timestamp"] > before["timestamp"]
        assert after["elapsed_seconds"] > 0
        shown_before = _rows(before)
        whole_before = before["channels_total"] == len(before["channels"])
        for name, row in _rows(after).items():
            if name in shown_before:
                expected = (row["messages"] - shown_before[name]["messages"]) / after["elapsed_seconds"]
            elif whole_before:
                expected = row["messages"] / after["elapsed_seconds"]  # a queue that was not there yet
            else:
                continue
            assert row["growth_per_second"] == pytest.approx(expected, rel=0.01, abs=0.002), (
                name,
                before,
                after,
            )
    assert any(_rows(document)["chat.lobby"]["growth_per_second"] > 0 for document in later)
    assert any(
        "chat.new" in _rows(document) and _rows(document)["chat.new"]["growth_per_second"] > 0
        for document in later
    )
    # The last refresh holds what is on the server; --limit 2 shows the two busiest of the three.
    assert on_server == {"chat.lobby": 5, "chat.new": 2, "chat.quiet": 1}
    last = documents[-1]
    assert [(row["name"], row["messages"]) for row in last["channels"]] == [
        ("chat.lobby", 5),
        ("chat.new", 2),
    ]
    assert last["channels_total"] == 3


async def test_json_lines_of_the_pubsub_layer(
    program: Callable[..., Program], valkey_url: str, key_prefix: str
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_url], prefix=key_prefix)
    try:
        one = await layer.new_channel()
        two = await layer.new_channel()
        await layer.group_add("room", one)
        await layer.group_add("room", two)
        await layer.send("jobs", {"type": "job"})
        await layer.send("jobs", {"type": "job"})
        top = program(
            *("--hosts", valkey_url, "--layer", "pubsub", "--prefix", key_prefix),
            *("--json", "--iterations", "1"),
        )
        # The subscriptions live on this test's event loop, so the program is waited for without blocking it.
        (line,) = await asyncio.to_thread(top.rest)
    finally:
        await _flush(layer)
    assert top.process.returncode == 0, top.stderr()
    document = json.loads(line)
    rows = _rows(document)
    assert set(rows) == {"jobs", one, two}
    assert document["channels"][0]["name"] == "jobs"  # queued messages first
    assert (rows["jobs"]["kind"], rows["jobs"]["messages"], rows["jobs"]["subscribers"]) == ("worker", 2, 0)
    for channel in (one, two):
        assert (rows[channel]["kind"], rows[channel]["subscribers"], rows[channel]["messages"]) == (
            "process",
            1,
            None,
        )
        assert rows[channel]["growth_per_second"] is None
    assert document["groups"] == [{"shard": 0, "name": "room", "subscribers": 1}]


def test_plain_snapshots_when_not_a_terminal(run_cli_process: Any, valkey_url: str, key_prefix: str) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_url], prefix=key_prefix)
    asyncio.run(_send(layer, "chat.lobby", 2))
    try:
        result = run_cli_process(
            "top", "--hosts", valkey_url, "--prefix", key_prefix, "--interval", "0.1", "--iterations", "2"
        )
    finally:
        asyncio.run(_flush(layer))
    assert result.status == 0, result.stderr
    assert "\x1b" not in result.stdout
    snapshots = result.stdout.split(f"\n\ncore layer, prefix {key_prefix!r}")
    assert len(snapshots) == 2
    assert result.stdout.startswith(f"core layer, prefix {key_prefix!r} (--hosts): ")
    assert "Ctrl-C" not in result.stdout
    for snapshot in snapshots:
        lines = snapshot.splitlines()
        assert ["shard", "host", "memory", "clients", "ops/s", "keys", "status"] in [
            line.split() for line in lines
        ]
        assert any(line.split()[1:4] == ["chat.lobby", "normal", "2"] for line in lines)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--interval", "0"),
        ("--interval", "-1"),
        ("--interval", "soon"),
        ("--interval", "inf"),
        ("--limit", "0"),
        ("--iterations", "-2"),
        ("--max-keys", "none"),
    ],
)
def test_a_bad_option_names_its_value(run_cli: Any, option: str, value: str) -> None:
    result = run_cli("top", "--hosts", "valkey://localhost", option, value)
    assert result.status == 2
    assert f"argument {option}: " in result.stderr
    assert repr(value) in result.stderr
    assert result.stdout == ""


def test_a_bad_target_is_a_usage_error(run_cli: Any) -> None:
    result = run_cli("top", "--hosts", "valkey://localhost", "--alias", "other")
    assert result.status == 2
    assert result.stderr.startswith("channels-valkey top: --alias")


def test_a_shard_going_down_is_an_error_row_and_the_view_goes_on(
    program: Callable[..., Program], server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    first, second = server_factory("top-first"), server_factory("top-second")
    urls = [first.url(), second.url()]
    layer = ValkeyChannelLayer(hosts=urls, prefix=key_prefix)
    # A normal channel's sends go round the shards: some on each.
    asyncio.run(_send(layer, "chat.lobby", 4))
    top = program("--hosts", *urls, "--prefix", key_prefix, "--json", "--interval", "0.2", "--timeout", "2")

    def on_shard(document: dict[str, Any], index: int) -> list[int]:
        return [row["messages"] for row in document["channels"] if row["shard"] == index]

    both = top.document_where(lambda document: on_shard(document, 1) == [2], "both shards listed")
    assert on_shard(both, 0) == [2]
    assert [shard["error"] for shard in both["shards"]] == [None, None]

    second.stop()
    down = top.document_where(lambda document: document["shards"][1]["error"] is not None, "shard 1 down")
    assert down["shards"][1]["error"].startswith("unreachable: ConnectionError")
    assert (down["shards"][1]["memory_bytes"], down["shards"][1]["clients"]) == (None, None)
    assert down["shards"][0]["error"] is None
    assert on_shard(down, 0) == [2]
    assert on_shard(down, 1) == []
    # The view goes on refreshing with the error row.
    for _ in range(2):
        again = top.next_document()
        assert again["shards"][1]["error"] is not None
        assert on_shard(again, 0) == [2]
    assert top.process.poll() is None

    second.start()
    back = top.document_where(lambda document: document["shards"][1]["error"] is None, "shard 1 back")
    assert back["shards"][1]["memory_bytes"] > 0

    top.process.send_signal(signal.SIGTERM)
    top.rest()
    assert top.process.returncode == 0
    assert "Traceback" not in top.stderr()
    asyncio.run(_flush(layer))


def test_every_primary_of_a_cluster_is_a_shard(
    program: Callable[..., Program], valkey_cluster: ValkeyCluster, key_prefix: str
) -> None:
    url = valkey_cluster.url()
    layer = ValkeyChannelLayer(hosts=[{"cluster": [url]}], prefix=key_prefix)
    asyncio.run(_send(layer, "chat.lobby", 2))
    try:
        top = program("--cluster", url, "--prefix", key_prefix, "--json", "--iterations", "1")
        document = top.next_document()
        assert top.rest() == []
    finally:
        asyncio.run(_flush(layer))
    assert top.process.returncode == 0, top.stderr()
    primaries = {
        f"valkey://{host}:{port}/0" for host, port in (node.address for node in valkey_cluster.primaries())
    }
    assert {shard["host"] for shard in document["shards"]} == primaries
    for shard in document["shards"]:
        assert shard["error"] is None
        assert shard["memory_bytes"] > 0
    # The name without the hash tag of its key, on the primary serving the key's slot.
    (row,) = document["channels"]
    assert (row["name"], row["messages"]) == ("chat.lobby", 2)
    host, port = valkey_cluster.primary_for(layer.queue_key("chat.lobby")).address
    assert document["shards"][row["shard"]]["host"] == f"valkey://{host}:{port}/0"


def test_through_sentinel(
    program: Callable[..., Program], sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    entry = sentinel_group.host_entry()
    layer = ValkeyChannelLayer(hosts=[entry], prefix=key_prefix)
    asyncio.run(_send(layer, "chat.lobby", 3))
    try:
        top = program("--hosts", json.dumps(entry), "--prefix", key_prefix, "--json", "--iterations", "1")
        document = top.next_document()
        assert top.rest() == []
    finally:
        asyncio.run(_flush(layer))
    assert top.process.returncode == 0, top.stderr()
    (shard,) = document["shards"]
    assert "mymaster" in shard["host"]
    assert shard["error"] is None
    assert shard["memory_bytes"] > 0
    assert [(row["name"], row["messages"]) for row in document["channels"]] == [("chat.lobby", 3)]
