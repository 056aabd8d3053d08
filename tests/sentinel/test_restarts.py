"""A server that restarts (and so comes back empty) is noticed by its ``run_id``: counted once per restart for the
process, whatever the event loops, with one WARNING; a connection cut without a restart is not counted; a server
whose ACL refuses ``INFO`` turns the check off without failing anything.

Each test has private servers: the ``INFO`` calls counted here are the manager's only (``CONFIG RESETSTAT`` between
two looks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import ConnectionManager, decode_hosts

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

PASSWORD = "restart-secret"
Eventually = Callable[..., Awaitable[None]]


def _infos_since_last_look(server: ValkeyProcess) -> int:
    """``INFO`` commands the server ran since the previous call (this call's own ``INFO`` is counted after it)."""
    with server.client() as client:
        calls = int(client.info("commandstats").get("cmdstat_info", {}).get("calls", 0))
        client.config_resetstat()
    return calls


def _restart_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "the server restarted" in record.getMessage()
    ]


async def _kill_and_start(server: ValkeyProcess) -> None:
    """``kill -9``, then the same server again on its port, empty (no persistence); the test's loop runs on."""
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)


async def test_a_restart_counts_once_for_the_process_whatever_the_event_loops(
    server_factory: Callable[..., ValkeyProcess],
    on_fresh_loop: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="channels_valkey.sentinel")
    server = server_factory(password=PASSWORD)
    manager = ConnectionManager(decode_hosts([server.url()]))
    counts = manager.shard_counts(0)

    async def ping() -> Any:
        return await manager.execute_command(0, "PING", idempotent=True)

    try:
        await ping()
        assert _infos_since_last_look(server) == 1  # the baseline, learned at the first connection
        on_fresh_loop(ping)  # another loop connects afresh (its socket is parked when it closes)
        assert _infos_since_last_look(server) == 0  # once per process, not per loop
        assert counts.restarts == 0

        await _kill_and_start(server)
        await (
            ping()
        )  # this loop's connection was lost (and the other loop's parked socket found dead): it asks
        assert counts.restarts == 1
        on_fresh_loop(ping)  # nothing failed since: a fresh connection does not ask again
        assert counts.restarts == 1
        assert _infos_since_last_look(server) == 1

        await _kill_and_start(server)
        on_fresh_loop(ping)  # this time another loop is first: the socket it had parked is dead, it asks
        assert counts.restarts == 2
        await (
            ping()
        )  # this loop's connection was lost too, before the other loop asked: nothing more to count
        assert counts.restarts == 2
        assert manager.connection_figures()[0].counts.restarts == 2
    finally:
        await manager.close()
    warnings = _restart_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert all(warning.startswith("shard 0 (") for warning in warnings)
    assert "queued" in warnings[0]
    assert "group memberships" in warnings[0]
    assert PASSWORD not in caplog.text


async def test_a_connection_cut_without_a_restart_is_checked_and_not_counted(
    server_factory: Callable[..., ValkeyProcess], eventually: Eventually, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="channels_valkey.sentinel")
    server = server_factory()
    with FaultProxy(server.host, server.port).start() as proxy:
        manager = ConnectionManager(decode_hosts([proxy.url()]))
        counts = manager.shard_counts(0)
        try:
            await manager.execute_command(0, "PING", idempotent=True)
            assert _infos_since_last_look(server) == 1
            assert proxy.cut() >= 1
            accepted = proxy.accepted_connections
            await manager.execute_command(0, "PING", idempotent=True)
            await eventually(lambda: proxy.accepted_connections > accepted, "the reconnection")
            # Asked again on the new connection (the cut might have been a restart), and the same server answered.
            assert _infos_since_last_look(server) >= 1
            assert counts.restarts == 0
            assert not _restart_warnings(caplog)
        finally:
            await manager.close()


@pytest.mark.parametrize(
    "layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer], ids=["core", "pubsub"]
)
async def test_a_process_that_only_receives_notices_the_restart(
    layer_class: type[Any],
    server_factory: Callable[..., ValkeyProcess],
    key_prefix: str,
    eventually: Eventually,
) -> None:
    server = server_factory()
    receiver = layer_class(hosts=[server.url()], prefix=key_prefix)
    sender = layer_class(hosts=[server.url()], prefix=key_prefix)  # another process, as far as counts go
    channel = f"{key_prefix}jobs"
    try:
        await sender.send(channel, {"type": "job", "n": 0})
        assert (await asyncio.wait_for(receiver.receive(channel), 10))["n"] == 0
        waiting = asyncio.create_task(receiver.receive(channel))
        await eventually(lambda: server.receives_waiting() >= 1, "the receive to wait on the server")
        await _kill_and_start(server)
        await sender.send(channel, {"type": "job", "n": 1})
        assert (await asyncio.wait_for(waiting, 10))["n"] == 1
        await eventually(
            lambda: receiver.stats()["shards"]["0"]["restarts"] == 1, "the receiver's restart count"
        )
        assert receiver.stats()["shards"]["0"]["reconnects"] >= 1
    finally:
        await receiver.close_pools()
        await sender.close_pools()


async def test_a_server_refusing_info_turns_the_check_off_quietly(
    server_factory: Callable[..., ValkeyProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="channels_valkey.sentinel")
    user, password = "no-info", "no-info-secret"
    # In the config file, so the user is there again after the restart.
    server = server_factory(user=f"{user} on >{password} ~* &* +@all -info")
    host, port = server.address
    manager = ConnectionManager(decode_hosts([f"valkey://{user}:{password}@{host}:{port}/0"]))
    counts = manager.shard_counts(0)
    try:
        assert (
            await manager.execute_command(0, "PING", idempotent=True) == b"PONG"
        )  # the refusal fails nothing
        assert counts.runs.off
        with server.client() as admin:
            refused = [entry for entry in admin.acl_log() if entry["object"] == "info"]
        assert [entry["count"] for entry in refused] == [1]

        await _kill_and_start(server)
        assert await manager.execute_command(0, "PING", idempotent=True) == b"PONG"
        with server.client() as admin:
            assert not [entry for entry in admin.acl_log() if entry["object"] == "info"]  # not asked again
        assert counts.restarts == 0
    finally:
        await manager.close()
    said = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert not [message for level, message in said if level >= logging.WARNING and "INFO" in message]
    assert any(level == logging.DEBUG and "refused INFO" in message for level, message in said)
    assert password not in caplog.text
