"""What the layers do on the server the tests run on (``pytest --server NAME``; the server matrix runs this file on
every server): where it lacks a command they prefer, the documented fallback is what runs, and the test says which.

- Queues are popped with a receipt on every server of the matrix (RESP3, client-side tracking and the pop script
  exist on all four). With ``ResiliencePolicy(receipts=False)`` they are read with ``BZMPOP``, which came with
  Redis 7.0: before it, with ``BZPOPMIN`` then ``ZPOPMIN`` for a batch, and the shard's facts say
  ``bzmpop_refused``.
- Lua: Valkey has a ``server`` global beside ``redis``, Redis only ``redis``, so every script calls ``redis.call``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from valkey.exceptions import ResponseError

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.core import scripts as core_scripts
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.pubsub import scripts as pubsub_scripts
from channels_valkey.sentinel import ResiliencePolicy, Script

from servers.binaries import Release
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]

LAYERS = pytest.mark.parametrize(
    "layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer], ids=["core", "pubsub"]
)


@LAYERS
@pytest.mark.parametrize("receipts", [True, False], ids=["receipts", "bzmpop"])
async def test_queues_are_read_with_receipts_or_bzmpop_or_its_fallback(
    layer_class: type[Any],
    receipts: bool,
    valkey_server: ValkeyProcess,
    server_under_test: Release,
    key_prefix: str,
    receive: Receive,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="channels_valkey.sentinel")
    # A normal channel: a sorted-set queue for both layers (the Pub/Sub layer's worker queue).
    layer = layer_class(
        hosts=[valkey_server.url()], prefix=key_prefix, policy=ResiliencePolicy(receipts=receipts)
    )
    try:
        for n in range(5):
            await layer.send("jobs", {"type": "job", "n": n})
        assert [(await receive(layer, "jobs"))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert not layer._connections.facts(0).receipts_refused, f"{server_under_test} refused receipt pops"
        fell_back = layer._connections.facts(0).bzmpop_refused
        said_so = any("refuses BZMPOP" in record.getMessage() for record in caplog.records)
    finally:
        await layer.flush()
        await layer.close_pools()
    if receipts or server_under_test.has_bzmpop:
        assert (fell_back, said_so) == (False, False), (
            f"{server_under_test} has BZMPOP, yet the layer fell back"
        )
    else:
        assert (fell_back, said_so) == (True, True), (
            f"{server_under_test} has no BZMPOP: the layer must have switched to BZPOPMIN + ZPOPMIN and logged it"
        )


def _knows(client: Any, *command: Any) -> bool:
    try:
        client.execute_command(*command)
    except ResponseError as error:
        if "unknown command" in str(error):
            return False
        raise
    return True


def test_the_server_has_the_commands_its_release_says(
    valkey_server: ValkeyProcess, server_under_test: Release, key_prefix: str
) -> None:
    # The release facts of tests/servers/binaries.py are what the skips and the fallback checks rest on.
    with valkey_server.client() as client:
        has_bzmpop = _knows(client, "BZMPOP", 0.01, 1, f"{key_prefix}empty", "MIN")
        has_spublish = _knows(client, "SPUBLISH", f"{key_prefix}nobody", "x")
    assert (has_bzmpop, has_spublish) == (server_under_test.has_bzmpop, server_under_test.has_sharded_pubsub)


@pytest.mark.parametrize("module", [core_scripts, pubsub_scripts], ids=["core", "pubsub"])
def test_scripts_call_the_server_through_the_redis_global_only(module: Any) -> None:
    # Valkey's `server` global is not on Redis; the conformance selection then runs each script on every server.
    scripts = [value for value in vars(module).values() if isinstance(value, Script)]
    assert scripts
    for script in scripts:
        assert re.search(r"\bredis\.p?call\(", script.source)
        assert not re.search(r"\bserver\.", script.source), script.source


async def test_a_script_runs_on_this_server(
    valkey_server: ValkeyProcess, server_under_test: Release, key_prefix: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "hello"})  # the group send script
        assert await layer.receive(channel) == {"type": "hello"}
    finally:
        await layer.flush()
        await layer.close_pools()
    with valkey_server.client() as client:
        # Redis refuses a read of an unknown global in a script, hence the pcall.
        probe = (
            "local ok, kind = pcall(function() return type(server) end) "
            "if ok and kind == 'table' then return 1 end return 0"
        )
        has_server_global = client.eval(probe, 0) == 1
    assert has_server_global is server_under_test.has_server_lua_global
