"""One ConnectionManager used from many event loops: async_to_sync calls, threads, explicit close; no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.sync import async_to_sync

from channels_valkey.sentinel import ConnectionManager, decode_hosts
from channels_valkey.sentinel.tasks import BackgroundTask

from conftest import WAIT_TIMEOUT
from servers.process import ValkeyProcess, wait_until
from servers.topologies import SentinelGroup

#: Calls from fresh event loops in a row: each closing loop is a chance for its Sentinel watcher to lose the one
#: cancellation asyncio.run gives it; before the fix, one of the first 20 or so hung in most runs.
FRESH_LOOP_CALLS = 100


def _manager(server: ValkeyProcess) -> ConnectionManager:
    return ConnectionManager(decode_hosts([server.url()]))


async def _roundtrip(manager: ConnectionManager, key: str, value: str) -> bytes | None:
    await manager.execute(0, lambda client: client.set(key, value), idempotent=True)
    result: bytes | None = await manager.execute(0, lambda client: client.get(key), idempotent=True)
    return result


def _in_threads(worker: Callable[[int], None], count: int, *, timeout: float) -> None:
    """``worker(0)`` to ``worker(count - 1)``, each in a thread of its own, all at once; returns when all ended or
    ``timeout`` seconds passed for each (the workers report their own errors)."""
    threads = [threading.Thread(target=worker, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)


def _wait_for_no_clients(server: ValkeyProcess) -> None:
    wait_until(
        lambda: server.connected_clients() == 0,
        timeout=5,
        message=lambda: f"the server to have no clients (has {server.connected_clients()})",
    )


def test_repeated_async_to_sync_calls_reuse_one_connection_and_close_leaves_none(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    manager = _manager(server)
    before = int(server.info("stats")["total_connections_received"])
    for index in range(25):
        assert async_to_sync(_roundtrip)(manager, f"{key_prefix}{index}", str(index)) == str(index).encode()
    # Each closing loop parked its connection's socket and the next loop took it (see parking.py): one connection
    # for the 25 calls, and one for asking.
    assert int(server.info("stats")["total_connections_received"]) - before == 2
    assert manager.parked_connections() == 1
    assert server.connected_clients() == 1
    async_to_sync(manager.close)()  # closes the parked sockets too
    assert manager.parked_connections() == 0
    _wait_for_no_clients(server)


def test_threads_with_their_own_loops_share_one_manager(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    manager = _manager(server)
    errors: list[BaseException] = []
    results: dict[int, list[bytes | None]] = {}

    def worker(number: int) -> None:
        async def work() -> list[bytes | None]:
            return await asyncio.gather(
                *(_roundtrip(manager, f"{key_prefix}{number}-{i}", f"{number}-{i}") for i in range(30))
            )

        try:
            results[number] = asyncio.run(work())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    _in_threads(worker, 4, timeout=30)
    assert not errors
    for number in range(4):
        assert results[number] == [f"{number}-{i}".encode() for i in range(30)]
    assert (
        server.connected_clients() == manager.parked_connections()
    )  # nothing open but what waits in the park
    asyncio.run(manager.close())
    _wait_for_no_clients(server)


async def test_close_releases_this_loops_connections_and_the_manager_stays_usable(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    manager = _manager(server)
    assert await _roundtrip(manager, f"{key_prefix}a", "1") == b"1"
    assert await asyncio.to_thread(server.connected_clients) >= 1
    await manager.close()
    await asyncio.to_thread(_wait_for_no_clients, server)
    assert await _roundtrip(manager, f"{key_prefix}b", "2") == b"2"
    await manager.close()


def test_two_loops_taking_turns_each_keep_their_own_shards(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    """The manager answers "this loop's shards" from the loop that asked last without its lock: two loops asking
    in strict turns must each get their own shards every time, never the other's."""
    server = server_factory()
    manager = _manager(server)
    turns = threading.Barrier(2, timeout=WAIT_TIMEOUT)
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        async def work() -> None:
            for turn in range(40):
                await asyncio.to_thread(turns.wait)  # the other loop asked just before this one
                seen[number].add(id(await manager.shard(0)))
                key = f"{key_prefix}{number}-{turn}"
                assert await _roundtrip(manager, key, str(turn)) == str(turn).encode()
            await manager.close()

        try:
            asyncio.run(work())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            turns.abort()

    _in_threads(worker, 2, timeout=60)
    assert not errors
    assert len(seen[0]) == 1
    assert len(seen[1]) == 1
    assert seen[0] != seen[1]


async def test_each_loop_gets_its_own_clients(valkey_server: ValkeyProcess) -> None:
    manager = _manager(valkey_server)
    here = await manager.client(0)

    def other_loop_client_id() -> int:
        async def fetch() -> int:
            return id(await manager.client(0))

        return asyncio.run(fetch())

    assert await asyncio.to_thread(other_loop_client_id) != id(here)
    assert await manager.client(0) is here
    await manager.close()


# Loops that close: asyncio.run (async_to_sync) cancels each task once ------------------------------------------------


async def test_sentinel_commands_from_fresh_loops_return_while_another_loop_uses_the_manager(
    sentinel_group: SentinelGroup, key_prefix: str, on_fresh_loop: Callable[..., Any]
) -> None:
    manager = ConnectionManager(decode_hosts([sentinel_group.host_entry()]))
    assert await _roundtrip(manager, f"{key_prefix}here", "here") == b"here"  # this loop's shard stays open

    def from_fresh_loops() -> list[Any]:
        return [
            on_fresh_loop(_roundtrip, manager, f"{key_prefix}{n}", str(n)) for n in range(FRESH_LOOP_CALLS)
        ]

    assert await asyncio.to_thread(from_fresh_loops) == [str(n).encode() for n in range(FRESH_LOOP_CALLS)]
    assert await _roundtrip(manager, f"{key_prefix}here", "again") == b"again"
    await manager.close()


def _run_in_thread(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())`` in a thread of its own; fails the test when it has not returned in time."""
    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(WAIT_TIMEOUT)
    assert not runner.is_alive(), f"asyncio.run did not return within {WAIT_TIMEOUT:.0f}s"


def test_a_closing_loop_ends_a_background_task_whose_work_loses_its_cancellation() -> None:
    ended = threading.Event()

    async def loses_one_cancellation() -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):  # as valkey-py loses one at times
                await asyncio.sleep(3600)
            await asyncio.sleep(3600)
        finally:
            ended.set()

    async def main() -> None:
        BackgroundTask(loses_one_cancellation(), "loses one cancellation")
        await asyncio.sleep(0)

    _run_in_thread(main)  # a plain task would keep asyncio.run waiting for ever
    assert ended.is_set()


def test_a_closing_loop_lets_a_background_task_finish_its_clean_up() -> None:
    cleaned_up: list[bool] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            for _ in range(5):  # as closing a connection does: a few turns of the loop
                await asyncio.sleep(0)
            cleaned_up.append(True)

    async def main() -> None:
        BackgroundTask(cleans_up(), "cleans up")
        await asyncio.sleep(0)

    # The loop cancels the work and its guard in no set order: a guard that cancelled the work again at once
    # would cut the clean-up short about every other time.
    for _ in range(20):
        _run_in_thread(main)
    assert cleaned_up == [True] * 20


async def test_stop_cancels_the_work_until_it_ends() -> None:
    async def loses_one_cancellation() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    task = BackgroundTask(loses_one_cancellation(), "loses one cancellation")
    await asyncio.sleep(0)
    await asyncio.wait_for(task.stop(), WAIT_TIMEOUT)
    assert task.work.cancelled()
