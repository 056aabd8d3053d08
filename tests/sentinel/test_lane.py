"""The command lane: concurrent commands share one connection and each gets its own reply, cancelled callers and
error replies leave it in step, and a server that went away while the lane was idle is found before writing."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest
import valkey
import valkey.asyncio
from valkey._parsers import _AsyncRESP2Parser

from channels_valkey.sentinel import ConnectionManager, ResiliencePolicy, decode_hosts, lane
from channels_valkey.sentinel.tracking_lane import OnOrphaned

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess


@pytest.fixture
async def manager(valkey_server: ValkeyProcess) -> AsyncIterator[ConnectionManager]:
    manager = ConnectionManager(decode_hosts([valkey_server.url()]), ResiliencePolicy())
    yield manager
    await manager.close()


def _received(server: ValkeyProcess) -> int:
    return int(server.info("stats")["total_connections_received"])


async def test_concurrent_commands_share_one_connection_and_get_their_own_replies(
    manager: ConnectionManager, valkey_server: ValkeyProcess
) -> None:
    await manager.execute_command(0, "PING", idempotent=True)  # connected before counting
    before = await asyncio.to_thread(_received, valkey_server)
    replies = await asyncio.gather(
        *(manager.execute_command(0, "ECHO", f"value-{n}", idempotent=True) for n in range(500))
    )
    assert replies == [f"value-{n}".encode() for n in range(500)]
    assert await asyncio.to_thread(_received, valkey_server) == before + 1  # + 1: the connection asking


async def test_cancelled_callers_and_error_replies_leave_the_lane_in_step(manager: ConnectionManager) -> None:
    rng = random.Random(7)
    await manager.execute_command(0, "SET", "lane-not-a-number", "abc", "EX", 60, idempotent=True)
    calls = [
        asyncio.create_task(manager.execute_command(0, "ECHO", str(n), idempotent=True)) for n in range(300)
    ]
    wrong = asyncio.create_task(manager.execute_command(0, "INCR", "lane-not-a-number", idempotent=True))
    cancelled = set(rng.sample(range(300), 100))
    await asyncio.sleep(0)  # every call has written its command
    for n in cancelled:
        calls[n].cancel()
    results = await asyncio.gather(*calls, wrong, return_exceptions=True)
    await manager.execute_command(0, "DEL", "lane-not-a-number", idempotent=True)
    for n in range(300):
        if n in cancelled:
            assert isinstance(results[n], asyncio.CancelledError)
        else:
            assert results[n] == str(n).encode()
    assert isinstance(results[300], valkey.ResponseError)  # its error reply went to it alone
    with pytest.raises(valkey.ResponseError, match="unknown command"):
        await manager.execute_command(0, "NOT-A-COMMAND", idempotent=True)
    assert await manager.execute_command(0, "ECHO", "after", idempotent=True) == b"after"


async def test_a_restarted_server_is_found_before_writing(
    server_factory: Callable[..., ValkeyProcess],
) -> None:
    server = server_factory()
    manager = ConnectionManager(decode_hosts([server.url()]), ResiliencePolicy())
    try:
        assert await manager.execute_command(0, "INCR", "counter", idempotent=False) == 1
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        # Not idempotent, so only a command known not to have run may be retried: the lane's reader saw the
        # connection end while it was idle, and the command runs exactly once, on a new connection.
        assert await manager.execute_command(0, "INCR", "counter", idempotent=False) == 1
    finally:
        await manager.close()


async def test_a_connection_reset_just_before_a_write_is_not_taken_for_a_lost_reply(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    """The reset reaches the socket before the lane's reader has seen it: the write is refused at once, so the
    command cannot have run and a non-idempotent one is sent again on a new connection, exactly once."""
    manager = ConnectionManager(decode_hosts([fault_proxy.url()]), ResiliencePolicy())
    key = f"{key_prefix}counter"
    try:
        for expected in range(1, 6):
            assert await manager.execute_command(0, "INCR", key, idempotent=False) == 2 * expected - 1
            fault_proxy.cut()  # returns once both sides are reset; no await lets the reader run before the write
            assert await manager.execute_command(0, "INCR", key, idempotent=False) == 2 * expected
    finally:
        await manager.execute_command(0, "DEL", key, idempotent=True)
        await manager.close()


async def test_a_silent_server_fails_the_waiting_command_and_the_lane_recovers(
    fault_proxy: FaultProxy,
) -> None:
    policy = ResiliencePolicy(socket_timeout=0.5, retry_deadline=0.5)
    manager = ConnectionManager(decode_hosts([fault_proxy.url()]), policy)
    try:
        assert await manager.execute_command(0, "ECHO", "before", idempotent=False) == b"before"
        fault_proxy.pause()
        started = time.monotonic()
        # Not idempotent: the reply may have been lost after the command ran, so the timeout is the caller's.
        with pytest.raises(valkey.TimeoutError, match="no reply"):
            await manager.execute_command(0, "ECHO", "during", idempotent=False)
        assert time.monotonic() - started < policy.socket_timeout + 2 * lane.WATCHDOG_TICK
        fault_proxy.resume()
        assert await manager.execute_command(0, "ECHO", "after", idempotent=False) == b"after"
    finally:
        await manager.close()


@pytest.mark.parametrize("parser", ["libvalkey", "python"])
async def test_replies_are_parsed_as_they_arrive_or_by_a_reader_task_with_valkey_pys_own_parser(
    server_factory: Callable[..., ValkeyProcess], parser: str
) -> None:
    """With libvalkey the transport's callback parses the replies (no reader task); with valkey-py's pure-Python
    parser a reader task does. Either way: replies in order, error replies to their caller, cancelled callers
    skipped, and a server that went away while the lane was idle is found before the next write."""
    server = server_factory()
    options = {} if parser == "libvalkey" else {"parser_class": _AsyncRESP2Parser}
    pool = valkey.asyncio.ConnectionPool.from_url(server.url(), **options)
    command_lane = lane.CommandLane(pool)
    try:
        calls = [asyncio.create_task(command_lane.execute_command("ECHO", str(n))) for n in range(50)]
        wrong = asyncio.create_task(command_lane.execute_command("NOT-A-COMMAND"))
        await asyncio.sleep(0)
        for n in range(0, 50, 3):
            calls[n].cancel()
        results = await asyncio.gather(*calls, wrong, return_exceptions=True)
        for n in range(50):
            expected = asyncio.CancelledError if n % 3 == 0 else None
            assert isinstance(results[n], expected) if expected else results[n] == str(n).encode()
        assert isinstance(results[50], valkey.ResponseError)
        link = command_lane._link
        assert link is not None
        assert (link.reader is None) == (parser == "libvalkey")
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        # The lane saw its connection end while it was idle: the command goes on a new connection, not lost.
        assert await command_lane.execute_command("INCR", "counter") == 1
        assert command_lane._link is not link
    finally:
        await command_lane.aclose()
        await pool.aclose()


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 1, "asgi:group:room", "1732312312.125", 60, 100, b"\x00" * 12 + b"payload"),
        ("PUBLISH", "canal-é", "texte"),
        ("SET", "big", b"x" * 100_000),
        ("BZMPOP", 0.5, 1, "key", "MIN", "COUNT", 20),
        ("CLIENT ID",),
    ],
)
def test_commands_are_packed_as_valkey_py_packs_them(args: tuple[object, ...]) -> None:
    connection = valkey.asyncio.Connection()
    assert b"".join(lane.pack(connection, args)) == b"".join(connection.pack_command(*args))


def test_a_value_no_packer_takes_raises_valkey_py_error() -> None:
    with pytest.raises(valkey.DataError):
        lane.pack(valkey.asyncio.Connection(), ("ECHO", True))


# The tracking lane's execute_keeping: a cancelled caller's reply goes to its on_orphaned ------------------------


#: Seconds a call of these tests may take to end: a reply that went nowhere would leave its caller waiting for ever.
ENDS_WITHIN = 10.0


async def _cancelled_in_the_end(call: asyncio.Task[object]) -> None:
    """Wait for ``call`` to end (at most ENDS_WITHIN seconds) and check that it ended cancelled."""
    await asyncio.wait({call}, timeout=ENDS_WITHIN)
    assert call.done(), "the cancelled call is still waiting for the reply its on_orphaned should have taken"
    assert call.cancelled()


async def _orphans_collector() -> tuple[dict[int, object], Callable[[int], OnOrphaned]]:
    """Where each cancelled call's reply (or error) lands, by call number, and the on_orphaned of call ``n``."""
    landed: dict[int, object] = {}

    def on_orphaned(n: int) -> OnOrphaned:
        async def land(reply: asyncio.Future[object]) -> None:
            try:
                landed[n] = await reply
            except Exception as error:
                landed[n] = error

        return land

    return landed, on_orphaned


async def test_cancelled_keeping_callers_each_get_their_own_reply(manager: ConnectionManager) -> None:
    """300 calls, 100 of them cancelled at once: every cancelled caller's reply reaches its on_orphaned (its own,
    none lost), every other caller gets its reply, and the lane stays in step."""
    lane_ = (await manager.shard(0)).tracking_lane
    await lane_.execute_command("PING")  # connected: each call writes in its first step
    landed, on_orphaned = await _orphans_collector()
    calls = [asyncio.create_task(lane_.execute_keeping(on_orphaned(n), "ECHO", str(n))) for n in range(300)]
    await asyncio.sleep(0)  # every call has written its command
    cancelled = set(random.Random(11).sample(range(300), 100))
    for n in cancelled:
        calls[n].cancel()
    await asyncio.wait(calls, timeout=ENDS_WITHIN)
    for n, call in enumerate(calls):
        if n in cancelled:
            await _cancelled_in_the_end(call)
        else:
            assert call.result() == str(n).encode()
    assert landed == {n: str(n).encode() for n in cancelled}
    assert lane_._kept == {}
    assert await lane_.execute_command("ECHO", "after") == b"after"


async def test_a_reply_read_before_the_cancelled_caller_runs_again_still_reaches_it(
    manager: ConnectionManager,
) -> None:
    """The caller is cancelled, and the lane reads the reply in the same event-loop step, before the caller runs
    again: the reply is kept for its on_orphaned (a shield used to do this at the cost of a loop step)."""
    lane_ = (await manager.shard(0)).tracking_lane
    await lane_.execute_command("PING")  # connected
    landed, on_orphaned = await _orphans_collector()
    call = asyncio.create_task(lane_.execute_keeping(on_orphaned(0), "ECHO", "early"))
    await asyncio.sleep(0)  # written
    time.sleep(0.05)  # noqa: ASYNC251 (on purpose: the reply reaches the socket while the loop is held)
    # Runs before the step that reads the socket: the caller's wake-up is queued behind the reading.
    asyncio.get_running_loop().call_soon(call.cancel)
    await _cancelled_in_the_end(call)
    assert landed == {0: b"early"}
    assert lane_._kept == {}


async def test_a_reply_read_after_the_cancelled_caller_gave_up_still_reaches_it(
    manager: ConnectionManager, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The caller is cancelled while its command waits on the server (a ``BLPOP`` answered only when the test
    pushes): the reply, read later, goes to its on_orphaned; a reply that never comes (the lane closed) reaches it
    as ConnectionError."""
    lane_ = (await manager.shard(0)).tracking_lane
    await lane_.execute_command("PING")  # connected: the call writes in its first step
    key = f"{key_prefix}kept"
    landed, on_orphaned = await _orphans_collector()
    call = asyncio.create_task(lane_.execute_keeping(on_orphaned(0), "BLPOP", key, 30))
    await asyncio.sleep(0)  # written; the server holds it until the push
    call.cancel()
    await asyncio.sleep(0)  # the caller's clean-up runs and waits for the reply
    assert not landed
    with valkey_server.client() as client:
        client.rpush(key, "late")
    await _cancelled_in_the_end(call)
    assert landed == {
        0: [key.encode(), b"late"]
    }  # on_orphaned was awaited before the cancellation ended the call
    call = asyncio.create_task(lane_.execute_keeping(on_orphaned(1), "BLPOP", key, 30))
    await asyncio.sleep(0)
    call.cancel()
    await asyncio.sleep(0)
    await lane_.aclose()
    await _cancelled_in_the_end(call)
    assert isinstance(landed[1], valkey.ConnectionError)
    assert lane_._kept == {}
