"""parking.py on its own: what a closing loop's pool parks, and that what it cannot park is still closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from channels_valkey.sentinel.parking import ConnectionPark, ParkingPool

from conftest import WAIT_TIMEOUT
from servers.process import ValkeyProcess


async def _until(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within the suite's wait, polled on the event loop."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def _clients_reach(server: ValkeyProcess, expected: int) -> int:
    """The server's client count once it is ``expected``, or when the wait ends: a close reaches the server a
    moment after the client makes it."""
    count = -1
    deadline = time.monotonic() + WAIT_TIMEOUT
    while count != expected and time.monotonic() < deadline:
        count = await asyncio.to_thread(server.connected_clients)
    return count


async def test_a_connection_with_an_unread_reply_is_not_parked_but_closed_with_its_pool(
    server_factory: Callable[..., ValkeyProcess],
) -> None:
    server = server_factory()
    park = ConnectionPark()
    pool = ParkingPool(park=park, host=server.host, port=server.port)
    quiet = await pool.get_connection("PING")
    busy = await pool.get_connection("PING")
    await quiet.send_command("PING")
    assert await quiet.read_response() == b"PONG"
    await busy.send_command("PING")  # its reply is never read: this socket must not serve another loop
    assert await _until(lambda: bool(busy._reader._buffer))  # type: ignore[attr-defined]
    await pool.release(quiet)
    await pool.release(busy)
    assert await _clients_reach(server, 2) == 2

    assert await pool.park_idle() == 1
    assert len(park) == 1
    await pool.disconnect()
    assert await _clients_reach(server, 1) == 1  # the parked socket's connection only
    park.close()
    assert await _clients_reach(server, 0) == 0
