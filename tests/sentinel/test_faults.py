"""Network faults between the client and the server (the fault proxy): latency, pauses, cut connections, and
cancellations; the pool recovers and every reply reaches the request that asked for it."""

from __future__ import annotations

import asyncio
import random

import pytest
import valkey
from valkey.asyncio.connection import Connection

from channels_valkey.sentinel import ConnectionManager, Failure, ResiliencePolicy, classify, decode_hosts

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


class _ResetDuringHealthCheck(Connection):
    """A connection that is disconnected once right after its health-check PING, before the command is written.

    That is what a failover reset (``pool.disconnect(inuse_connections=True)``) does to a command caught between
    its health check and its write.
    """

    resets_left = 0

    async def check_health(self) -> None:
        await super().check_health()
        if type(self).resets_left:
            type(self).resets_left -= 1
            await self.disconnect()


async def test_a_command_whose_connection_was_reset_before_the_write_is_retried(
    valkey_url: str, key_prefix: str
) -> None:
    """Even a non-idempotent command is retried then: valkey-py had not written a byte of it."""
    key = f"{key_prefix}l"
    hosts = decode_hosts([{"address": valkey_url, "connection_class": _ResetDuringHealthCheck}])
    manager = ConnectionManager(hosts, ResiliencePolicy(health_check_interval=0.001))
    try:
        await manager.execute(0, lambda c: c.ping(), idempotent=True)
        _ResetDuringHealthCheck.resets_left = 1
        await asyncio.sleep(0.01)  # past the health-check interval, so the next command PINGs first
        assert await manager.execute(0, lambda c: c.rpush(key, "once"), idempotent=False) == 1
        assert _ResetDuringHealthCheck.resets_left == 0
        assert await manager.execute(0, lambda c: c.lrange(key, 0, -1), idempotent=True) == [b"once"]
    finally:
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


async def test_without_retry_a_refused_command_fails_at_its_first_refusal(
    fault_proxy: FaultProxy, key_prefix: str
) -> None:
    """``retry=False`` is for a caller with somewhere else to go: the refusal comes back as it is, at once."""
    manager = _manager(fault_proxy)
    try:
        await manager.execute_command(0, "SET", f"{key_prefix}k", "v", idempotent=True)
        fault_proxy.refuse()
        fault_proxy.cut()
        with pytest.raises(valkey.ConnectionError) as refused:
            await asyncio.wait_for(
                manager.execute_command(0, "GET", f"{key_prefix}k", idempotent=True, retry=False), 10
            )
        # The lane's reset connection or the refused new one: either way the command never ran.
        assert classify(refused.value) is Failure.NOT_RUN
        assert manager.shard_counts(0).reconnects == 0
        fault_proxy.accept()
        assert await manager.execute_command(0, "GET", f"{key_prefix}k", idempotent=True, retry=False) == b"v"
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
