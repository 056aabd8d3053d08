"""Network faults between the client and the server (the fault proxy): latency, pauses, cut connections, and
cancellations; the pool recovers and every reply reaches the request that asked for it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import pytest
import valkey
from valkey.asyncio.connection import Connection

from channels_valkey.sentinel import CommandNotSent, ConnectionManager, ResiliencePolicy, Script, decode_hosts

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
    its health check and its write. It makes no other health check: valkey-py's connect pipelines two ``CLIENT
    SETINFO`` before reading their replies, and with this test's 1 ms interval a check between the two (the event
    loop busy for a millisecond) would read the first one's ``OK`` as the answer to its ``PING``.
    """

    resets_left = 0

    async def check_health(self) -> None:
        if not type(self).resets_left:
            return
        await super().check_health()
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
        # The proxy resets each connection (refused at connect, or cut at the first write): an idempotent command
        # would be retried, but not with retry=False.
        with pytest.raises(valkey.ConnectionError):
            await asyncio.wait_for(
                manager.execute_command(0, "GET", f"{key_prefix}k", idempotent=True, retry=False), 10
            )
        assert manager.shard_counts(0).reconnects == 0
        fault_proxy.accept()
        assert await manager.execute_command(0, "GET", f"{key_prefix}k", idempotent=True, retry=False) == b"v"
    finally:
        fault_proxy.accept()
        await manager.close()


async def test_a_shard_down_past_the_retry_budget_is_tried_once_per_backoff_cap_until_it_answers(
    fault_proxy: FaultProxy, key_prefix: str, eventually: Callable[..., Awaitable[None]]
) -> None:
    """Decision: once a command spent its whole retry budget on a shard, the shard is down for longer than the policy
    rides out. Its next commands fail at once with CommandNotSent, without a connection attempt, except one every
    ``backoff_cap`` seconds, which tries once; the first that succeeds gives the shard its retries back."""
    rest = 0.2
    manager = _manager(fault_proxy, retry_deadline=0.5, backoff_cap=rest)
    reconnects = manager.shard_counts(0)

    async def get() -> bytes | None:
        value: bytes | None = await asyncio.wait_for(
            manager.execute_command(0, "GET", f"{key_prefix}k", idempotent=True), 10
        )
        return value

    try:
        await manager.execute_command(0, "SET", f"{key_prefix}k", "v", idempotent=True)
        fault_proxy.refuse()
        fault_proxy.cut()
        with pytest.raises(valkey.ConnectionError):
            await get()
        given_up = asyncio.get_running_loop().time()
        spent, tried = reconnects.reconnects, fault_proxy.accepted_connections
        assert spent >= 2  # the budget: retried until retry_deadline
        # Commands fail at once, not trying, until the rest is over; then one tries (the proxy sees it) and fails.
        refused_at_once = 0
        while fault_proxy.accepted_connections == tried:
            with pytest.raises(valkey.ConnectionError) as refused:
                await get()
            if isinstance(refused.value, CommandNotSent):
                refused_at_once += 1
            await asyncio.sleep(0.01)  # the pace of the commands
            assert asyncio.get_running_loop().time() - given_up < 10, "no command tried the shard again"
        assert refused_at_once >= 5
        assert asyncio.get_running_loop().time() - given_up >= rest * 0.9
        assert reconnects.reconnects == spent  # nothing retried meanwhile
        fault_proxy.accept()
        # The next command that tries succeeds, and gives the shard its retries back. A script call the server has
        # not seen (as after a restart): the EVALSHA that tries gets NOSCRIPT, an answer all the same, and the EVAL
        # after it goes through.
        unseen = Script(f"return '{key_prefix}back'")
        answers: list[object] = []

        async def try_script() -> None:
            with contextlib.suppress(CommandNotSent):
                answers.append(await unseen.run(manager, 0, [], [], idempotent=True))

        while not answers:
            await try_script()
            await asyncio.sleep(0.01)  # the pace of the commands
            assert asyncio.get_running_loop().time() - given_up < 10, "the shard was not tried again"
        assert answers == [f"{key_prefix}back".encode()]
        fault_proxy.refuse()
        fault_proxy.cut()
        pending = asyncio.create_task(get())
        await eventually(lambda: reconnects.reconnects > spent, "a retry")
        fault_proxy.accept()
        assert await pending == b"v"
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
