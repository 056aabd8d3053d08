"""Connection cuts during a stream: the fault proxy ends every connection of a layer, alternately with a FIN and a
reset (RST), while it sends numbered messages to a normal channel and receives them. Every send whose reply came is
received exactly once; a send whose reply was lost raises ``ReplyLost`` (counted here) and is never sent again by
the layer, so nothing arrives twice. Cuts of the receiving connections lose nothing either: a reader's pop keeps
what it took in a receipt on the server until its reply was read.

Both layers: the core layer's normal channel, the Pub/Sub layer's worker channel (a queue: Pub/Sub itself keeps
nothing). The issue's size, 1,000 cuts during 50,000 messages, runs under ``hatch run chaos``; CI runs 100 cuts
during 5,000.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import valkey

from channels_valkey.sentinel import ReplyLost

from faults.support import BACKENDS, make_layer, receive_until, report, settles, sizes
from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

#: Messages per cut: the issue's 1,000 cuts during 50,000 messages.
MESSAGES_PER_CUT = 50
#: Longest the stream may take to drain after the last send, for the messages still queued. A cut every 50 sends
#: (each about 20 ms apart here) keeps the receiving side reconnecting and backing off most of the time when its
#: connections are cut too, so most of the stream is received after the last send.
DRAIN_TIMEOUT = 30.0


@dataclass
class Stream:
    """What the sender and the receiver saw."""

    acked: list[int] = field(default_factory=list)
    reply_lost: list[int] = field(default_factory=list)
    #: Sends that failed some other way (none expected: a cut is always retried or ReplyLost).
    other_errors: list[str] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    receive_errors: list[str] = field(default_factory=list)
    cuts: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)


async def _send_all(layer: object, total: int, stream: Stream) -> None:
    for n in range(total):
        try:
            await layer.send("stream", {"type": "n", "n": n})  # type: ignore[attr-defined]
        except ReplyLost:
            stream.reply_lost.append(n)
        except (valkey.ConnectionError, valkey.TimeoutError) as error:
            stream.other_errors.append(f"{n}: {type(error).__name__}: {error}")
        else:
            stream.acked.append(n)
        stream.progress.set()


async def _cut_every(proxy: FaultProxy, every: int, cuts: int, stream: Stream) -> None:
    """Cut after every ``every`` sends, FIN and RST in turns, ``cuts`` times."""
    for index in range(cuts):
        while len(stream.acked) + len(stream.reply_lost) + len(stream.other_errors) < (index + 1) * every:
            stream.progress.clear()
            await stream.progress.wait()
        await asyncio.to_thread(proxy.cut, graceful=index % 2 == 0)
        stream.cuts += 1


@dataclass
class Outcome:
    stream: Stream
    acked: set[int]
    lost: set[int]
    duplicated: int
    drained: bool


async def _stream_through_cuts(
    backend: str, size: int, server: ValkeyProcess, prefix: str, *, cut_receiver: bool, fault: str
) -> Outcome:
    """Send ``size`` messages through the proxy, cutting every :data:`MESSAGES_PER_CUT` sends; receive them through
    the proxy too (``cut_receiver``) or straight from the server."""
    cuts = size // MESSAGES_PER_CUT
    stream = Stream()
    done = asyncio.Event()
    with FaultProxy(server.host, server.port) as proxy:
        layer = make_layer(backend, [proxy.url()], prefix)
        reader = layer if cut_receiver else make_layer(backend, [server.url()], prefix)
        started = time.monotonic()
        receiver = asyncio.create_task(receive_until(reader, done, stream))
        try:
            await asyncio.gather(
                _send_all(layer, size, stream), _cut_every(proxy, MESSAGES_PER_CUT, cuts - 1, stream)
            )
            await asyncio.to_thread(proxy.cut, graceful=False)  # the last one, after the last send
            stream.cuts += 1
            acked = set(stream.acked)
            key = layer.queue_key("stream")
            with server.client() as client:
                # Figures first, then the verdict: a stream that never drains still reports what it lost.
                drained = await settles(
                    lambda: acked <= set(stream.received) and client.zcard(key) == 0, DRAIN_TIMEOUT
                )
                left_queued = client.zcard(key)
            elapsed = time.monotonic() - started
        finally:
            done.set()
            await receiver
            await layer.flush()
            for closing in {id(layer): layer, id(reader): reader}.values():
                await closing.close_pools()
        accepted = proxy.accepted_connections
    lost = acked - set(stream.received)
    duplicated = len(stream.received) - len(set(stream.received))
    report(
        f"{fault}: {stream.cuts} cuts (FIN, RST alternating) during {size} messages, {backend.split('.')[1]}",
        acknowledged=len(stream.acked),
        reply_lost=len(stream.reply_lost),
        reply_lost_delivered=len(set(stream.reply_lost) & set(stream.received)),
        other_send_errors=len(stream.other_errors),
        receive_errors=len(stream.receive_errors),
        lost=len(lost),
        left_queued=left_queued,
        duplicated=duplicated,
        connections_made=accepted,
        seconds=elapsed,
    )
    assert stream.cuts == cuts
    assert duplicated == 0
    assert set(stream.received) <= acked | set(stream.reply_lost)
    assert not stream.other_errors, stream.other_errors[:5]
    assert stream.reply_lost, "no send lost its reply: the cuts never caught a send in flight"
    return Outcome(stream, acked, lost, duplicated, drained)


@BACKENDS
@sizes(ci=5_000, chaos=50_000)
async def test_cuts_of_the_senders_connections_lose_and_duplicate_nothing_acknowledged(
    backend: str, size: int, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    outcome = await _stream_through_cuts(
        backend, size, valkey_server, key_prefix, cut_receiver=False, fault="sender cut"
    )
    assert not outcome.lost, f"acknowledged but never received: {sorted(outcome.lost)[:20]}"
    assert outcome.drained, f"the stream did not drain within {DRAIN_TIMEOUT:.0f}s"


@BACKENDS
@sizes(ci=5_000, chaos=50_000)
async def test_cuts_of_every_connection_lose_and_duplicate_nothing_acknowledged(
    backend: str, size: int, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The receiving connections are cut too. A reader's pop keeps what it took in the reader's receipt on the
    server until the reply was read, and reads it back after a cut (receipts.py), so a pop whose reply was on the
    wire loses nothing; the members of the last reply read are not delivered again."""
    outcome = await _stream_through_cuts(
        backend, size, valkey_server, key_prefix, cut_receiver=True, fault="every connection cut"
    )
    assert not outcome.lost, f"acknowledged but never received: {sorted(outcome.lost)[:20]}"
    assert outcome.drained, f"the stream did not drain within {DRAIN_TIMEOUT:.0f}s"
