"""Blocking calls (``Shard.blocking_call``): replies come back on kept connections, a cancelled caller's popped
entry goes to ``on_interrupted``, and a server that goes silent fails the call within its timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import valkey

from channels_valkey.sentinel import ConnectionManager, ResiliencePolicy, bzpopmin_entry, decode_hosts

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

BLOCK = 0.2


@pytest.fixture
async def manager(valkey_server: ValkeyProcess) -> AsyncIterator[ConnectionManager]:
    manager = ConnectionManager(decode_hosts([valkey_server.url()]), ResiliencePolicy(), block_seconds=BLOCK)
    yield manager
    await manager.close()


async def _nothing_interrupted(reply: object) -> None:
    raise AssertionError(f"no call was interrupted, yet {reply!r} came back")


def _received(server: ValkeyProcess) -> int:
    return int(server.info("stats")["total_connections_received"])


async def test_replies_come_back_on_kept_connections(
    manager: ConnectionManager, valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    key = f"{key_prefix}queue"
    shard = await manager.shard(0)
    await manager.execute_command(
        0, "ZADD", key, *[x for n in range(100) for x in (n, f"m{n}")], idempotent=True
    )
    assert bzpopmin_entry(await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted)) == (
        b"m0",
        0,
    )
    before = await asyncio.to_thread(_received, valkey_server)
    popped = [
        bzpopmin_entry(await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted))
        for _ in range(99)
    ]
    assert popped == [(f"m{n}".encode(), n) for n in range(1, 100)]
    assert await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted) is None  # timed out
    # + 1: the connection asking; the calls themselves opened none.
    assert await asyncio.to_thread(_received, valkey_server) == before + 1


async def test_a_cancelled_caller_hands_what_was_popped_to_on_interrupted(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    manager = ConnectionManager(decode_hosts([fault_proxy.url()]), ResiliencePolicy(), block_seconds=5)
    key = f"{key_prefix}queue"
    try:
        shard = await manager.shard(0)
        await manager.execute_command(0, "ZADD", key, 1, "only", idempotent=True)
        await shard.blocking_call(("BZPOPMIN", f"{key_prefix}other", 0.01), _nothing_interrupted)  # connected
        fault_proxy.set_latency(0.05)
        interrupted: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        async def put_back(reply: object) -> None:
            interrupted.set_result(reply)

        call = asyncio.create_task(shard.blocking_call(("BZPOPMIN", key, 5), put_back))
        await asyncio.sleep(0.01)  # written, still on its way to the server, which will pop and reply
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert bzpopmin_entry(await asyncio.wait_for(interrupted, 5)) == (b"only", 1)
        fault_proxy.set_latency(0)
        # The connection is in step for the next call.
        await manager.execute_command(0, "ZADD", key, 2, "next", idempotent=True)
        reply = await shard.blocking_call(("BZPOPMIN", key, 1), _nothing_interrupted)
        assert bzpopmin_entry(reply) == (b"next", 2)
    finally:
        await manager.close()


async def test_a_silent_server_fails_the_call_within_block_time_and_margin(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    policy = ResiliencePolicy(blocking_margin=0.3)
    manager = ConnectionManager(decode_hosts([fault_proxy.url()]), policy, block_seconds=BLOCK)
    key = f"{key_prefix}queue"
    try:
        shard = await manager.shard(0)
        assert await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted) is None
        fault_proxy.pause()
        started = time.monotonic()
        with pytest.raises(valkey.TimeoutError, match="BZPOPMIN"):
            await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted)
        assert time.monotonic() - started < BLOCK + policy.blocking_margin + 1.0
        fault_proxy.resume()
        await manager.execute_command(0, "ZADD", key, 3, "after", idempotent=True)
        reply = await shard.blocking_call(("BZPOPMIN", key, BLOCK), _nothing_interrupted)
        assert bzpopmin_entry(reply) == (b"after", 3)
    finally:
        await manager.close()
