"""One ConnectionManager used from many event loops: async_to_sync calls, threads, explicit close; no leaks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from asgiref.sync import async_to_sync

from channels_valkey.sentinel import ConnectionManager, decode_hosts

from servers.process import ValkeyProcess, wait_until


def _manager(server: ValkeyProcess) -> ConnectionManager:
    return ConnectionManager(decode_hosts([server.url()]))


async def _roundtrip(manager: ConnectionManager, key: str, value: str) -> bytes | None:
    await manager.execute(0, lambda client: client.set(key, value), idempotent=True)
    result: bytes | None = await manager.execute(0, lambda client: client.get(key), idempotent=True)
    return result


def _wait_for_no_clients(server: ValkeyProcess) -> None:
    wait_until(
        lambda: server.connected_clients() == 0,
        timeout=5,
        message=lambda: f"the server to have no clients (has {server.connected_clients()})",
    )


def test_repeated_async_to_sync_calls_leave_no_connection_behind(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    manager = _manager(server)
    for index in range(25):
        assert async_to_sync(_roundtrip)(manager, f"{key_prefix}{index}", str(index)) == str(index).encode()
    _wait_for_no_clients(server)
    assert int(server.info("stats")["total_connections_received"]) >= 25  # every call really connected


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

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    for number in range(4):
        assert results[number] == [f"{number}-{i}".encode() for i in range(30)]
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
