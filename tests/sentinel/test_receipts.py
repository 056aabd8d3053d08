"""Popping with a receipt (receipts.py): a pop whose reply was lost is read back, nothing is delivered twice.

The reply of a pop is lost when its connection is cut with the reply on the wire. Such a cut cannot be timed from a
test, so each case plays its steps on a real server: "the pop ran but its reply was lost" is the pop script run for
the reader by another client, which is exactly what the server did in that case; "the pop never ran" is a pop that
was not sent. ``tests/faults/test_connection_cuts.py`` makes real cuts (FIN and RST) under traffic.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import ConnectionManager, ResiliencePolicy, decode_hosts
from channels_valkey.sentinel.queue_commands import Entry, score_member_pairs
from channels_valkey.sentinel.receipts import POP, REQUEUE, Receipt, pop_with_receipt
from channels_valkey.sentinel.tracking_lane import Doorbell

from servers.binaries import Release
from servers.process import ValkeyProcess

TTL_MS = 60_000
Eventually = Callable[..., Awaitable[None]]


async def _nothing_interrupted(entries: list[Entry]) -> None:
    raise AssertionError(f"no pop of these tests is cancelled, yet {entries!r} came back")


async def _pop(manager: ConnectionManager, receipt: Receipt, count: int, timeout: float = 0.0) -> list[bytes]:
    entries = await pop_with_receipt(
        manager, 0, receipt, Doorbell(), count, timeout, TTL_MS, _nothing_interrupted
    )
    return [member for member, _ in entries]


def _pop_with_lost_reply(server: ValkeyProcess, receipt: Receipt, count: int) -> None:
    """What the server does for a pop whose reply never reaches the reader."""
    with server.client() as client:
        flag = "1" if receipt.uncertain else "0"
        client.eval(POP.source, 2, receipt.key, receipt.name, count, TTL_MS, flag)
    receipt.lost()


def _queue(server: ValkeyProcess, key: str, *members: bytes, start: float = 1.0) -> None:
    with server.client() as client:
        client.zadd(key, {member: start + index for index, member in enumerate(members)})


@pytest.fixture
def receipt(key_prefix: str) -> Receipt:
    """A reader's receipt for the queue ``{key_prefix}queue``."""
    return Receipt(f"{key_prefix}queue")


@pytest.fixture
async def manager(valkey_server: ValkeyProcess) -> Any:
    connections = ConnectionManager(decode_hosts([valkey_server.url()]))
    yield connections
    await connections.close()


async def test_what_a_lost_reply_popped_comes_with_the_next_pop(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    key = receipt.key
    _queue(valkey_server, key, b"m1", b"m2", b"m3", b"m4")
    assert await _pop(manager, receipt, 1) == [b"m1"]
    _pop_with_lost_reply(valkey_server, receipt, 2)  # m2 and m3 left the queue for the receipt only
    assert await _pop(manager, receipt, 1) == [
        b"m2",
        b"m3",
        b"m4",
    ]  # read back, oldest first, then the new one
    with valkey_server.client() as client:
        assert client.zcard(key) == 0
        # Kept until the next pop whose reply comes: it clears the receipt.
        assert client.zrange(receipt.name, 0, -1) == [b"m2", b"m3", b"m4"]
    assert await _pop(manager, receipt, 1) == []
    with valkey_server.client() as client:
        assert not client.exists(receipt.name)


async def test_a_pop_that_never_ran_delivers_nothing_twice(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    key = receipt.key
    _queue(valkey_server, key, b"m1", b"m2")
    assert await _pop(manager, receipt, 1) == [b"m1"]
    receipt.lost()  # the next pop failed before it reached the server: the receipt still holds m1, seen
    assert await _pop(manager, receipt, 1) == [b"m2"]


async def test_replies_lost_in_a_row_are_all_read_back(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    key = receipt.key
    _queue(valkey_server, key, b"m1", b"m2", b"m3", b"m4")
    assert await _pop(manager, receipt, 1) == [b"m1"]
    _pop_with_lost_reply(valkey_server, receipt, 1)  # m2
    _pop_with_lost_reply(valkey_server, receipt, 1)  # m3: the receipt keeps m2, as the reply of m2 never came
    assert await _pop(manager, receipt, 1) == [b"m2", b"m3", b"m4"]


async def test_an_older_receipt_after_a_failover_delivers_nothing_twice(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    """Replication is asynchronous: a primary promoted after a kill may hold the receipt of an earlier pop than the
    reader's last. Its entries were delivered lately, so they are not delivered again."""
    key = receipt.key
    _queue(valkey_server, key, b"m1", b"m2", b"m3")
    assert await _pop(manager, receipt, 1) == [b"m1"]
    assert await _pop(manager, receipt, 1) == [b"m2"]
    # What the new primary got: the first pop's receipt, not the second's.
    with valkey_server.client() as client:
        client.delete(receipt.name)
        client.zadd(receipt.name, {b"m1": 1.0})
    receipt.lost()
    assert await _pop(manager, receipt, 1) == [b"m3"]


async def test_a_message_given_back_and_popped_again_is_not_taken_for_one_seen(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    """m1 is popped (seen), given back to the queue (a receive went away), and popped again by a pop whose reply is
    lost: it must come with the next pop, although its bytes are those of a reply already read."""
    key = receipt.key
    _queue(valkey_server, key, b"m1")
    popped = await pop_with_receipt(manager, 0, receipt, Doorbell(), 1, 0.0, TTL_MS, _nothing_interrupted)
    assert [member for member, _ in popped] == [b"m1"]
    await REQUEUE.run(manager, 0, [key, receipt.name], score_member_pairs(popped), idempotent=True)
    receipt.returned(popped)
    _pop_with_lost_reply(valkey_server, receipt, 1)
    assert await _pop(manager, receipt, 1) == [b"m1"]


async def test_a_waiting_pop_is_woken_by_a_send_and_by_nothing_else(
    manager: ConnectionManager, valkey_server: ValkeyProcess, receipt: Receipt
) -> None:
    key = receipt.key
    waiting = asyncio.ensure_future(_pop(manager, receipt, 1, timeout=10.0))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # tracked, not polling: nothing to pop, nothing returned
    with valkey_server.client() as client:
        client.set(f"{key}-other", b"x")  # another key changes: no wake-up for this queue
    _queue(valkey_server, key, b"late")
    assert await asyncio.wait_for(waiting, 5) == [b"late"]


async def test_a_waiting_pop_returns_empty_after_its_timeout(
    manager: ConnectionManager, receipt: Receipt
) -> None:
    # time.monotonic, not loop.time: uvloop's clock counts whole milliseconds, so 0.3 s there may read 0.2999...
    started = time.monotonic()
    assert await _pop(manager, receipt, 1, timeout=0.3) == []
    assert 0.3 <= time.monotonic() - started < 3.0


@pytest.mark.parametrize("layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer])
async def test_a_reader_that_stops_leaves_no_receipt_behind(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, eventually: Eventually
) -> None:
    """A receipt lives while its reader receives: a reader that stops clears it, and so does closing the loop."""
    layer = layer_class(hosts=[valkey_server.url()], prefix=key_prefix)
    channel = f"{key_prefix}jobs"

    def receipts() -> list[bytes]:
        with valkey_server.client() as client:
            return list(client.scan_iter(match=f"{key_prefix}*$receipt:*"))

    try:
        await layer.send(channel, {"type": "one"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "one"}
        await eventually(lambda: receipts() == [], "the stopped reader's receipt to be cleared")
        await layer.send(channel, {"type": "two"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "two"}
        await layer.close_pools()  # at once, before the reader clears the receipt itself
        assert receipts() == []
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer])
async def test_a_reader_keeps_no_delivered_message_alive(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """What a reader remembers of the messages it delivered (to drop a stale receipt's copies after a failover)
    costs the same for any message size: 200 messages of 50 kB received leave well under their 10 MB held."""
    layer = layer_class(hosts=[valkey_server.url()], prefix=key_prefix, capacity=1000)
    channel = f"{key_prefix}jobs"
    try:
        await layer.send(channel, {"type": "warm-up"})
        await asyncio.wait_for(layer.receive(channel), 5)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(200):
                await layer.send(channel, {"type": "job", "n": number, "data": bytes(50_000)})
                assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == number
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert kept < 1_000_000, f"{kept:,} bytes still held after 200 messages of 50 kB"
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.mark.parametrize("layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer])
def test_a_receive_through_async_to_sync_leaves_no_receipt_behind(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """``async_to_sync`` (and ``asyncio.run``) cancel the reader as its loop closes, before the layers' hooks on
    the loop's close run: the reader clears its receipt then, so none outlives the call with a copy of the message
    (the core layer's used to stay until ``expiry``, one per call)."""
    layer = layer_class(hosts=[valkey_server.url()], prefix=key_prefix)
    channel = f"{key_prefix}jobs"
    try:
        for number in range(3):
            async_to_sync(layer.send)(channel, {"type": "job", "n": number})
            assert async_to_sync(layer.receive)(channel) == {"type": "job", "n": number}
            with valkey_server.client() as client:
                assert list(client.scan_iter(match=f"{key_prefix}*$receipt:*")) == []
    finally:
        async_to_sync(layer.flush)()


@pytest.mark.parametrize("layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer])
async def test_a_policy_without_receipts_pops_with_bzmpop(
    layer_class: type[Any],
    server_factory: Callable[..., ValkeyProcess],
    key_prefix: str,
    eventually: Eventually,
    server_under_test: Release,
) -> None:
    """``ResiliencePolicy(receipts=False)``: a waiting receive blocks on the server in ``BZMPOP`` (``BZPOPMIN`` on
    a server without it), as in 0.3, and no receipt is written."""
    server = server_factory()  # its own, so that its command counts are this test's
    layer = layer_class(hosts=[server.url()], prefix=key_prefix, policy=ResiliencePolicy(receipts=False))
    channel = f"{key_prefix}jobs"
    try:
        waiting = asyncio.create_task(layer.receive(channel))
        await eventually(lambda: int(server.info("clients")["blocked_clients"]) == 1, "the receive to block")
        await layer.send(channel, {"type": "one"})
        assert await asyncio.wait_for(waiting, 5) == {"type": "one"}
        with server.client() as client:
            assert list(client.scan_iter(match=f"{key_prefix}*$receipt:*")) == []
            blocking = "cmdstat_bzmpop" if server_under_test.has_bzmpop else "cmdstat_bzpopmin"
            assert blocking in client.info("commandstats")
            assert "cmdstat_client|tracking" not in client.info("commandstats")
    finally:
        await layer.close_pools()


def test_receipts_in_the_policy_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"ResiliencePolicy.receipts must be True or False, not 'no'"):
        ResiliencePolicy(receipts="no")  # type: ignore[arg-type]


async def test_wait_received_returns_once_the_receipts_are_cleared(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The core layer's ``wait_received`` (0.3's, for its in-flight backups) waits for the readers to clear their
    receipts, so a caller counting the server's keys right after finds none of them."""
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    try:
        await layer.send("jobs", {"type": "one"})
        assert await asyncio.wait_for(layer.receive("jobs"), 5) == {"type": "one"}
        await layer.wait_received()
        with valkey_server.client() as client:
            assert list(client.scan_iter(match=f"{key_prefix}*$receipt:*")) == []
    finally:
        await layer.close_pools()


def _pops_run(server: ValkeyProcess) -> int:
    """How many scripts (the pops) the server has run since it started."""
    stats = server.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_after_a_pop_that_empties_the_queue_the_next_waits_for_the_doorbell_without_popping(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, eventually: Eventually
) -> None:
    server = server_factory()
    manager = ConnectionManager(decode_hosts([server.url()]))
    receipt, bell = Receipt(f"{key_prefix}queue"), Doorbell()

    async def pop(timeout: float) -> list[bytes]:
        entries = await pop_with_receipt(manager, 0, receipt, bell, 1, timeout, TTL_MS, _nothing_interrupted)
        return [member for member, _ in entries]

    try:
        _queue(server, receipt.key, b"m1")
        assert await pop(0.0) == [b"m1"]  # the queue is empty after it
        before = _pops_run(server)
        waiting = asyncio.ensure_future(pop(10.0))
        await eventually(lambda: bell._waiting is not None, "the pop waiting on its doorbell")
        _queue(server, receipt.key, b"m2")
        assert await asyncio.wait_for(waiting, 5) == [b"m2"]
        assert (
            _pops_run(server) - before == 1
        )  # the pop the doorbell called for, no pop to find the queue empty

        # A message that comes between two pops rings the doorbell all the same: the next pop is at once.
        _queue(server, receipt.key, b"m3")
        assert await asyncio.wait_for(pop(10.0), 5) == [b"m3"]
    finally:
        await manager.close()
