"""The server frozen with SIGSTOP for 2 s, again and again, during a stream: the receive loops go on, a send caught by
a pause fails within the policy's reply timeout (``ReplyLost``: it may have run, so it is not sent again) or waits
for the server without being written twice, and nothing acknowledged is lost or arrives twice.

Both layers: the core layer's normal channel, the Pub/Sub layer's worker channel. The issue's 20 pauses run under
``hatch run chaos``; CI runs 2.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import valkey

from channels_valkey.sentinel import ReplyLost, ResiliencePolicy

from faults.support import BACKENDS, make_layer, receive_until, report, settles, sizes
from servers.process import ValkeyProcess

#: The issue's pause.
PAUSE_SECONDS = 2.0
#: Acknowledged sends between the end of one pause and the next.
SENDS_BETWEEN = 300
#: Short enough that a 2 s pause trips it: the reply timeout and the connect timeout.
POLICY = ResiliencePolicy(socket_timeout=0.5, connect_timeout=0.5)
#: Slack over the reply timeout for an error to reach the caller: the event loop must run the lane's watchdog, then
#: the caller, on a machine busy with the stream and the test's own server.
ERROR_MARGIN = POLICY.socket_timeout * 0.2
#: Longest the receivers may take to catch up after the last pause.
DRAIN_TIMEOUT = 10.0


@dataclass
class Stream:
    acked: list[int] = field(default_factory=list)
    reply_lost: list[int] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    #: How long each send that raised took, in seconds.
    error_after: list[float] = field(default_factory=list)
    #: The longest any send took.
    longest_send: float = 0.0
    received: list[int] = field(default_factory=list)
    receive_errors: list[str] = field(default_factory=list)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sent(self) -> int:
        return len(self.acked) + len(self.reply_lost) + len(self.other_errors)


async def _send_until(layer: object, stop: asyncio.Event, stream: Stream) -> None:
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await layer.send("stream", {"type": "n", "n": n})  # type: ignore[attr-defined]
        except ReplyLost:
            stream.reply_lost.append(n)
            stream.error_after.append(time.monotonic() - started)
        except (valkey.ConnectionError, valkey.TimeoutError) as error:
            stream.other_errors.append(f"{n}: {type(error).__name__}: {error}")
            stream.error_after.append(time.monotonic() - started)
        else:
            stream.acked.append(n)
        stream.longest_send = max(stream.longest_send, time.monotonic() - started)
        stream.progress.set()
        n += 1


async def _wait_for_sends(stream: Stream, count: int) -> None:
    while stream.sent < count:
        stream.progress.clear()
        await stream.progress.wait()


@BACKENDS
@sizes(ci=2, chaos=20)
async def test_sigstop_pauses_during_a_stream(
    backend: str, size: int, server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    layer = make_layer(backend, [server.url()], key_prefix, policy=POLICY)
    stream = Stream()
    stop, done = asyncio.Event(), asyncio.Event()
    receiver = asyncio.create_task(receive_until(layer, done, stream))
    sender = asyncio.create_task(_send_until(layer, stop, stream))
    started = time.monotonic()
    try:
        for _ in range(size):
            await _wait_for_sends(stream, stream.sent + SENDS_BETWEEN)
            server.suspend()
            try:
                await asyncio.sleep(PAUSE_SECONDS)  # the fault itself: its length is what is being tested
            finally:
                server.resume()
        await _wait_for_sends(stream, stream.sent + SENDS_BETWEEN)  # flowing again after the last pause
        stop.set()
        await sender
        acked = set(stream.acked)
        key = layer.queue_key("stream")
        with server.client() as client:
            drained = await settles(
                lambda: acked <= set(stream.received) and client.zcard(key) == 0, DRAIN_TIMEOUT
            )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        server.resume()
        await sender
        done.set()
        await receiver
        await layer.flush()
        await layer.close_pools()
    lost = acked - set(stream.received)
    duplicated = len(stream.received) - len(set(stream.received))
    report(
        f"{size} SIGSTOP pauses of {PAUSE_SECONDS:.0f} s during a stream, {backend.split('.')[1]}",
        acknowledged=len(stream.acked),
        reply_lost=len(stream.reply_lost),
        other_send_errors=len(stream.other_errors),
        slowest_error_s=max(stream.error_after, default=0.0),
        socket_timeout_s=POLICY.socket_timeout,
        longest_send_s=stream.longest_send,
        receive_errors=len(stream.receive_errors),
        lost=len(lost),
        duplicated=duplicated,
        seconds=elapsed,
    )
    assert drained, f"the stream did not drain within {DRAIN_TIMEOUT:.0f}s"
    assert not lost, f"acknowledged but never received: {sorted(lost)[:20]}"
    assert duplicated == 0
    assert set(stream.received) <= acked | set(stream.reply_lost)
    assert not stream.receive_errors, stream.receive_errors[:5]
    assert stream.error_after, "no send was caught by a pause"
    slowest = max(stream.error_after)
    assert slowest <= POLICY.socket_timeout + ERROR_MARGIN, (
        f"an error took {slowest:.2f}s to reach the caller"
    )
