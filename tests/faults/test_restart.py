"""``kill -9`` of a server without persistence during a stream, then the same server again on its port (issue #18):
service is back within 1 s of the port reopening, the loss is reported, and nothing is lost after the restart.

- Back within 1 s: from the moment the port accepts a plain TCP connection again to the first acknowledged send,
  and to the first message received, of those whose send started after the kill.
- The loss reported: the server comes back empty, so what it held at the kill is gone. The sender keeps close to
  the receiver, and the receiver is held back for a while before each kill, so that the server holds a known
  batch; the test reports how many messages were acknowledged and never received, and the layer reports the restart
  itself, counted in ``stats()`` (exactly one per kill) and logged as a WARNING.
- Nothing lost after: every acknowledged message that the server was not holding at a kill is received, and none
  twice. A send caught by the kill raises (``ReplyLost`` when it was written); none vanishes unaccounted.

Both layers: the core layer's normal channel, the Pub/Sub layer's worker channel. Default policy: a send or a receive
retries a refused connection with a backoff capped at 0.5 s. CI runs 1 restart; ``hatch run chaos`` runs 5.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import valkey

from channels_valkey.sentinel import ReplyLost

from faults.support import BACKENDS, make_layer, report, settles, sizes
from servers.process import START_TIMEOUT, ValkeyProcess

#: How long the server stays down: long enough for the layer's retries to reach their longest backoff (0.5 s).
OUTAGE_SECONDS = 1.0
#: The promise: seconds from the port reopening to the first acknowledged send and the first message received.
BACK_WITHIN = 1.0
#: Acknowledged sends between a restart and the next kill (and after the last restart).
SENDS_BETWEEN = 300
#: Acknowledged sends while the receiver is held back, just before each kill: what the server then holds.
HELD_BEFORE_KILL = 100
#: While the receiver takes messages, the sender keeps at most this many acknowledged messages ahead of it, so that
#: what the server holds at a kill is the messages sent while the receiver was held back, not a backlog.
WINDOW = 50
#: Longest the receiver may take to catch up after the last restart.
DRAIN_TIMEOUT = 10.0
#: Seconds between two tries of the reopened port.
PORT_POLL = 0.002


@dataclass
class Stream:
    """The numbered messages of one stream: what became of each send, and what arrived when."""

    next_n: int = 0
    #: Acknowledged sends, with when they were acknowledged (monotonic clock).
    acked: dict[int, float] = field(default_factory=dict)
    reply_lost: list[int] = field(default_factory=list)
    #: Other send errors, ``"n: Type: text"``.
    other_errors: list[str] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    #: When each received message arrived, by number (the first arrival).
    received_at: dict[int, float] = field(default_factory=dict)
    receive_errors: list[str] = field(default_factory=list)
    #: Set while the receiver takes messages; cleared to let the server hold them.
    receiving: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set at each acknowledged or failed send, and at each message received.
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    #: Messages numbered from here count in :attr:`ahead` (moved past what a kill took).
    window_from: int = 0
    #: Acknowledged and received messages numbered from :attr:`window_from`.
    acked_in_window: int = 0
    received_in_window: int = 0

    @property
    def sent(self) -> int:
        return len(self.acked) + len(self.reply_lost) + len(self.other_errors)

    @property
    def ahead(self) -> int:
        """Acknowledged messages the receiver has not taken yet (of those that can still arrive)."""
        return self.acked_in_window - self.received_in_window

    def hold_receiver(self) -> None:
        self.receiving.clear()
        self.progress.set()  # a sender waiting for the receiver goes on

    def restart_window(self) -> None:
        """What the server held is gone: only messages sent from now on count in :attr:`ahead`."""
        self.window_from = self.next_n
        self.acked_in_window = self.received_in_window = 0


@dataclass
class Restart:
    """What one kill and restart did."""

    #: Messages acknowledged and not received when the server was killed, and the send under way then (its reply
    #: may be on its way back): what the server may have held.
    at_risk: set[int]
    #: The queue's length on the server just before the kill.
    queued: int
    #: Sends numbered from here on started after the kill.
    boundary: int
    #: Seconds from the port reopening to the first acknowledged send and the first received message after it.
    ack_after: float = math.inf
    receive_after: float = math.inf


async def _send_until(layer: object, stop: asyncio.Event, stream: Stream) -> None:
    while not stop.is_set():
        if stream.receiving.is_set() and stream.ahead > WINDOW:
            stream.progress.clear()
            await stream.progress.wait()
            continue
        n = stream.next_n
        stream.next_n += 1
        try:
            await layer.send("stream", {"type": "n", "n": n})  # type: ignore[attr-defined]
        except ReplyLost:
            stream.reply_lost.append(n)
        except (valkey.ConnectionError, valkey.TimeoutError) as error:
            stream.other_errors.append(f"{n}: {type(error).__name__}: {error}")
        else:
            stream.acked[n] = time.monotonic()
            if n >= stream.window_from:
                stream.acked_in_window += 1
        stream.progress.set()


async def _receive_until(layer: object, done: asyncio.Event, stream: Stream) -> None:
    while not done.is_set():
        await stream.receiving.wait()
        try:
            message = await asyncio.wait_for(layer.receive("stream"), 1.0)  # type: ignore[attr-defined]
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            continue
        except (valkey.ConnectionError, valkey.TimeoutError) as error:
            stream.receive_errors.append(f"{type(error).__name__}: {error}")
            continue
        n = message["n"]
        stream.received.append(n)
        stream.received_at.setdefault(n, time.monotonic())
        if n >= stream.window_from:
            stream.received_in_window += 1
        stream.progress.set()


async def _wait_for_acks(stream: Stream, count: int) -> None:
    while len(stream.acked) < count:
        stream.progress.clear()
        await stream.progress.wait()


def _port_reopened(address: tuple[str, int], timeout: float) -> float:
    """The monotonic time at which ``address`` first accepted a TCP connection (polled from a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=PORT_POLL * 10):
                return time.monotonic()
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not accept a connection within {timeout:.0f}s") from None
            time.sleep(PORT_POLL)


def _first_after(times: dict[int, float], boundary: int) -> float | None:
    return min((at for n, at in times.items() if n >= boundary), default=None)


def _seconds_after(reopened: float, times: dict[int, float], boundary: int) -> float:
    """Seconds from ``reopened`` to the first of ``times`` of a message numbered from ``boundary`` (inf: none)."""
    first = _first_after(times, boundary)
    return math.inf if first is None else first - reopened


def _served_since(stream: Stream, boundary: int) -> bool:
    """Whether a message sent after the kill (numbered from ``boundary``) was acknowledged, and one received."""
    return (
        _first_after(stream.acked, boundary) is not None
        and _first_after(stream.received_at, boundary) is not None
    )


@BACKENDS
@sizes(ci=1, chaos=5)
async def test_kill_9_and_restart_without_persistence(
    backend: str,
    size: int,
    server_factory: Callable[..., ValkeyProcess],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="channels_valkey.sentinel")
    server = server_factory()
    with server.client() as client:
        persistence = client.config_get("save") | client.config_get("appendonly")
    assert persistence == {"save": "", "appendonly": "no"}, "a restart must start empty"
    port = server.port
    layer = make_layer(backend, [server.url()], key_prefix)
    key = layer.queue_key("stream")
    stream = Stream()
    stream.receiving.set()
    stop, done = asyncio.Event(), asyncio.Event()
    receiver = asyncio.create_task(_receive_until(layer, done, stream))
    sender = asyncio.create_task(_send_until(layer, stop, stream))
    restarts: list[Restart] = []
    started = time.monotonic()
    try:
        for _ in range(size):
            await _wait_for_acks(stream, len(stream.acked) + SENDS_BETWEEN)
            stream.hold_receiver()
            await _wait_for_acks(stream, len(stream.acked) + HELD_BEFORE_KILL)
            # No await from here to the kill: the snapshot is what the server holds when it dies.
            with server.client() as client:
                queued = client.zcard(key)
            under_way = stream.next_n - 1
            held = ({*stream.acked, under_way}) - set(stream.received)
            restart = Restart(held, queued, stream.next_n)
            server.kill()
            stream.restart_window()
            stream.receiving.set()
            await asyncio.sleep(OUTAGE_SECONDS)  # the fault itself: the server is down this long
            starting = asyncio.create_task(asyncio.to_thread(server.start))
            reopened = await asyncio.to_thread(_port_reopened, server.address, START_TIMEOUT)
            await starting
            assert server.port == port
            await settles(partial(_served_since, stream, restart.boundary), DRAIN_TIMEOUT)
            restart.ack_after = _seconds_after(reopened, stream.acked, restart.boundary)
            restart.receive_after = _seconds_after(reopened, stream.received_at, restart.boundary)
            restarts.append(restart)
        await _wait_for_acks(stream, len(stream.acked) + SENDS_BETWEEN)  # flowing after the last restart
        stop.set()
        await sender
        at_risk = set().union(*(restart.at_risk for restart in restarts))
        expected = set(stream.acked) - at_risk
        drained = await settles(lambda: expected <= set(stream.received), DRAIN_TIMEOUT)
        with server.client() as client:
            left_queued = client.zcard(key)
        elapsed = time.monotonic() - started
        counted = layer.stats()["shards"]["0"]["restarts"]
    finally:
        stop.set()
        stream.progress.set()
        await sender
        done.set()
        stream.receiving.set()
        await receiver
        await layer.flush()
        await layer.close_pools()
    received = set(stream.received)
    lost_held = at_risk - received
    lost_after = expected - received
    duplicated = len(stream.received) - len(received)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "the server restarted" in record.getMessage()
    ]
    report(
        f"{size} kill -9 and restart of the server without persistence during a stream, {backend.split('.')[1]}",
        acknowledged=len(stream.acked),
        reply_lost=len(stream.reply_lost),
        other_send_errors=len(stream.other_errors),
        receive_errors=len(stream.receive_errors),
        queued_at_kills=sum(restart.queued for restart in restarts),
        lost_held_at_kills=len(lost_held),
        lost_after=len(lost_after),
        duplicated=duplicated,
        restarts_counted=counted,
        slowest_first_ack_s=max(restart.ack_after for restart in restarts),
        slowest_first_receive_s=max(restart.receive_after for restart in restarts),
        outage_s=OUTAGE_SECONDS,
        seconds=elapsed,
    )
    assert stream.sent == stream.next_n  # every send acknowledged or raised: none vanished unaccounted
    assert drained, f"the stream did not drain within {DRAIN_TIMEOUT:.0f}s ({left_queued} left queued)"
    assert not lost_after, f"acknowledged after a restart but never received: {sorted(lost_after)[:20]}"
    assert duplicated == 0
    assert received <= set(stream.acked) | set(stream.reply_lost)
    # The loss is real (each kill took what the server held), and the layer said so: once per restart.
    assert all(restart.at_risk - received for restart in restarts), (
        "a kill lost nothing: the server held nothing"
    )
    assert counted == size
    assert len(warnings) == size, warnings
    slowest = max(max(restart.ack_after, restart.receive_after) for restart in restarts)
    assert slowest <= BACK_WITHIN, f"service came back {slowest:.2f}s after the port reopened"
