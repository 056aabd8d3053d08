"""An operator who restricted the layer's user to the commands channels-valkey 0.3 documented keeps everything
working after the upgrade: newer commands the ACL refuses fall back to the documented ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.sentinel import ResiliencePolicy

from servers.process import ValkeyProcess
from servers.topologies import add_acl_user

#: What channels-valkey 0.3 told operators its core layer needs.
DOCUMENTED_COMMANDS = [
    "bzpopmin", "del", "eval", "expire", "keys", "zadd", "zcount", "zpopmin", "zrange", "zrem",
    "zremrangebyscore", "multi", "exec",
]  # fmt: skip

Eventually = Callable[..., Awaitable[None]]


def _blocked(server: ValkeyProcess, user: str) -> int:
    """Connections of ``user`` blocked in a command (a receive's pop) on ``server``."""
    with server.client() as client:
        return sum(1 for entry in client.client_list() if entry["user"] == user and "b" in entry["flags"])


async def test_a_user_limited_to_the_documented_commands_keeps_working(
    secured_valkey: ValkeyProcess, key_prefix: str, eventually: Eventually, caplog: pytest.LogCaptureFixture
) -> None:
    add_acl_user(
        secured_valkey, "legacy-layer", "pw", [f"~{key_prefix}*", *(f"+{c}" for c in DOCUMENTED_COMMANDS)]
    )
    host, port = secured_valkey.address
    # Health checks every 50 ms, so that the idle-connection check (PING) is exercised too.
    policy = ResiliencePolicy(health_check_interval=0.05)
    layer = ValkeyChannelLayer(
        hosts=[f"valkey://legacy-layer:pw@{host}:{port}"], prefix=key_prefix, policy=policy
    )
    caplog.set_level(logging.WARNING, logger="channels_valkey.sentinel")
    try:
        await layer.send("plain", {"type": "one"})
        assert await asyncio.wait_for(layer.receive("plain"), 5) == {"type": "one"}
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        # Once the reader of "plain" has stopped lingering its connection is idle; past the health-check interval
        # the next pop on it is preceded by a PING, which the ACL refuses.
        await eventually(lambda: _blocked(secured_valkey, "legacy-layer") == 0, "the reader to stop")
        await asyncio.sleep(0.1)  # idle past the health-check interval: the passing of time is the condition
        await layer.group_send("room", {"type": "grouped"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "grouped"}
        assert any("refuses PING" in record.message for record in caplog.records)
        assert await layer.group_channels("room") == [channel]
        await layer.group_discard("room", channel)

        # The readers of the receives above stop once they have lingered; then the only pop is the next receive's.
        await eventually(lambda: _blocked(secured_valkey, "legacy-layer") == 0, "the earlier readers to stop")
        receiving = asyncio.create_task(layer.receive("later"))
        await eventually(lambda: _blocked(secured_valkey, "legacy-layer") == 1, "the receive to block")
        receiving.cancel()  # cancelling a waiting receive must not need CLIENT UNBLOCK to be safe
        await layer.send("later", {"type": "kept"})
        assert await asyncio.wait_for(layer.receive("later"), 10) == {"type": "kept"}
        await layer.send("left-over", {"type": "x"})
        await layer.flush()
        with secured_valkey.client() as admin:
            assert list(admin.scan_iter(match=f"{key_prefix}*")) == []
    finally:
        await layer.close_pools()
