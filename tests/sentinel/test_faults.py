"""Network faults between the client and the server (the fault proxy): latency, pauses, cut connections, and
cancellations; the pool recovers and every reply reaches the request that asked for it."""

from __future__ import annotations

import asyncio
import random

import pytest
import valkey

from channels_valkey.sentinel import ConnectionManager, ResiliencePolicy, decode_hosts

from servers.fault_proxy import FaultProxy


def _manager(proxy: FaultProxy, **policy: float) -> ConnectionManager:
    return ConnectionManager(decode_hosts([proxy.url()]), ResiliencePolicy(**policy))


async def _get(manager: ConnectionManager, key: str) -> bytes | None:
    value: bytes | None = await manager.execute(0, lambda client: client.get(key), idempotent=True)
    return value


async def test_commands_work_through_latency(fault_proxy: FaultProxy, key_prefix: str) -> None:
    manager = _manager(fault_proxy)
    fault_proxy.set_latency(0.02)
    try:
        await manager.execute(0, lambda c: c.set(f"{key_prefix}k", "v"), idempotent=True)
        assert await _get(manager, f"{key_prefix}k") == b"v"
    finally:
        await manager.close()


async def test_cut_connections_are_replaced_and_idempotent_commands_retried(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    manager = _manager(fault_proxy)
    try:
        await manager.execute(0, lambda c: c.set(f"{key_prefix}k", "v"), idempotent=True)
        assert fault_proxy.cut() >= 1
        assert await _get(manager, f"{key_prefix}k") == b"v"
    finally:
        await manager.close()


async def test_a_pause_longer_than_the_reply_timeout_is_retried_after_resume(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    manager = _manager(fault_proxy, socket_timeout=0.3)
    await manager.execute(0, lambda c: c.set(f"{key_prefix}k", "v"), idempotent=True)
    fault_proxy.pause()
    pending = asyncio.create_task(_get(manager, f"{key_prefix}k"))
    try:
        # The first attempt times out while paused; it is retried, and answers once bytes flow again.
        await asyncio.sleep(0.5)
        assert not pending.done()
        fault_proxy.resume()
        assert await asyncio.wait_for(pending, 10) == b"v"
    finally:
        fault_proxy.resume()
        await manager.close()


async def test_a_lost_reply_of_a_non_idempotent_command_reaches_the_caller(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    manager = _manager(fault_proxy, socket_timeout=0.3)
    await manager.execute(0, lambda c: c.ping(), idempotent=True)
    fault_proxy.pause()
    try:
        with pytest.raises(valkey.TimeoutError):
            await manager.execute(0, lambda c: c.rpush(f"{key_prefix}l", 1), idempotent=False)
    finally:
        fault_proxy.resume()
        await manager.close()


async def test_refused_connections_are_retried_until_the_server_is_reachable(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    manager = _manager(fault_proxy)
    try:
        await manager.execute(0, lambda c: c.set(f"{key_prefix}k", "v"), idempotent=True)
        fault_proxy.refuse()
        fault_proxy.cut()
        pending = asyncio.create_task(_get(manager, f"{key_prefix}k"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        fault_proxy.accept()
        assert await asyncio.wait_for(pending, 10) == b"v"
    finally:
        fault_proxy.accept()
        await manager.close()


async def test_no_reply_reaches_the_wrong_request_after_random_cancellations(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    """Thousands of GETs with random cancels under latency: every completed GET returns its own key's value."""
    manager = _manager(fault_proxy)
    keys = [f"{key_prefix}{index}" for index in range(50)]
    for key in keys:
        await manager.execute(0, lambda c, k=key: c.set(k, k), idempotent=True)
    fault_proxy.set_latency(0.002)
    rng = random.Random(7)
    completed = cancelled = 0

    async def one(key: str) -> None:
        assert await _get(manager, key) == key.encode()

    try:
        for _ in range(40):
            tasks = [asyncio.create_task(one(rng.choice(keys))) for _ in range(50)]
            await asyncio.sleep(rng.uniform(0, 0.01))
            for task in tasks:
                if rng.random() < 0.5:
                    task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, asyncio.CancelledError):
                    cancelled += 1
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    completed += 1
        assert completed > 100
        assert cancelled > 100
        # And the pool is healthy afterwards.
        fault_proxy.set_latency(0)
        assert [await _get(manager, key) for key in keys] == [key.encode() for key in keys]
    finally:
        await manager.close()
