"""Large messages: 1 MB messages round-trip in both layers; a message over ``max_message_bytes`` fails on send with
an error naming its size and the limit, before anything is written; bad limits are refused when the layer is made."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.sentinel import DEFAULT_MAX_MESSAGE_BYTES, MessageTooLarge

from faults.support import BACKENDS, CORE, make_layer, report
from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]

#: The issue's "messages of 1 MB".
ONE_MB = 1_000_000

#: Commands by which either layer writes a message (INFO commandstats names).
WRITES = ("evalsha", "eval", "publish", "spublish", "zadd")


def _big(size: int, n: int = 0) -> dict[str, Any]:
    return {"type": "big", "n": n, "data": os.urandom(size)}


def _writes(server: ValkeyProcess) -> int:
    """How many message-writing commands the server has run since it started."""
    stats = server.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in WRITES)


@BACKENDS
async def test_messages_of_one_megabyte_round_trip(
    backend: str, valkey_server: ValkeyProcess, key_prefix: str, receive: Receive
) -> None:
    layer = make_layer(backend, [valkey_server.url()], key_prefix)
    try:
        direct = await layer.new_channel()
        await layer.group_add("big", direct)
        sent = [_big(ONE_MB, n) for n in range(3)]
        await layer.send("big.normal", sent[0])
        await layer.send(direct, sent[1])
        assert await receive(layer, "big.normal") == sent[0]
        assert await receive(layer, direct) == sent[1]
        await layer.group_send("big", sent[2])
        assert await receive(layer, direct) == sent[2]
        size = len(layer.serialize(sent[0]))
        report(f"1 MB round trip, {backend.split('.')[1]}", payload_bytes=size, messages=3, lost=0)
        assert size > ONE_MB
    finally:
        await layer.flush()
        await layer.close_pools()


@BACKENDS
async def test_a_message_over_the_limit_fails_before_anything_is_written(
    backend: str, server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    server = server_factory()
    message = _big(ONE_MB)
    limit = len(make_layer(backend, [server.url()], key_prefix).serialize(message))
    with FaultProxy(server.host, server.port) as proxy:
        layer = make_layer(backend, [proxy.url()], key_prefix, max_message_bytes=limit)
        try:
            # A fresh layer: the oversized send must not even open a connection.
            over = _big(ONE_MB + 1)
            with pytest.raises(MessageTooLarge) as refused:
                await layer.send("big.normal", over)
            assert proxy.accepted_connections == 0
            text = str(refused.value)
            assert f"{limit + 1:,} bytes" in text
            assert f"max_message_bytes ({limit:,})" in text
            assert "'big.normal'" in text
            assert isinstance(refused.value, ValueError)

            # At the limit it goes through; connected now, an oversized send or group_send still writes nothing.
            await layer.send("big.normal", message)
            assert await receive(layer, "big.normal") == message
            direct = await layer.new_channel()
            await layer.group_add("big", direct)
            before = _writes(server)
            with pytest.raises(MessageTooLarge, match=r"channel 'big\.normal'"):
                await layer.send("big.normal", over)
            with pytest.raises(MessageTooLarge, match="group 'big'"):
                await layer.group_send("big", over)
            # A group nobody is in is refused the same (a message is checked, not only its copies written).
            with pytest.raises(MessageTooLarge, match="group 'nobody'"):
                await layer.group_send("nobody", over)
            with pytest.raises(MessageTooLarge, match="group 'nobody'"):
                await layer.group_send_many([("big", message), ("nobody", over)])
            with pytest.raises(MessageTooLarge, match=r"channel 'big\.normal'"):
                await layer.send_many([("big.normal", message), ("big.normal", over)])
            with pytest.raises(MessageTooLarge, match="group 'big'"):
                await layer.group_send_many([("big", message), ("big", over)])
            written = _writes(server) - before
            report(
                f"over the limit, {backend.split('.')[1]}",
                limit_bytes=limit,
                refused_sends=6,
                connections_before_the_first=0,
                commands_written=written,
            )
            assert written == 0
            # Nothing arrived: the next message through is the next one sent.
            await layer.send(direct, {"type": "after"})
            assert await receive(layer, direct) == {"type": "after"}
        finally:
            await layer.flush()
            await layer.close_pools()


async def test_a_process_channel_counts_the_channel_name_it_carries(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The core layer adds ``__asgi_channel__`` to a process channel's message: the limit holds the bytes stored."""
    message = {"type": "m", "data": b"x" * 1000}
    probe = make_layer(CORE, [valkey_server.url()], key_prefix)
    limit = len(probe.serialize(message))
    layer = make_layer(CORE, [valkey_server.url()], key_prefix, max_message_bytes=limit)
    try:
        await layer.send("normal", message)
        with pytest.raises(MessageTooLarge):
            await layer.send(await layer.new_channel(), message)
    finally:
        await layer.flush()
        await layer.close_pools()


@BACKENDS
@pytest.mark.parametrize("limit", [0, -1, 1.5, "1MB", True])
def test_a_bad_limit_is_refused_naming_it(backend: str, limit: object) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"max_message_bytes must be a whole number >= 1, not {limit!r}")
    ):
        make_layer(backend, ["valkey://127.0.0.1:1"], "p", max_message_bytes=limit)


@BACKENDS
def test_the_limit_defaults_to_sixteen_mebibytes_and_none_lifts_it(backend: str) -> None:
    assert make_layer(backend, ["valkey://127.0.0.1:1"], "p").max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert (
        make_layer(backend, ["valkey://127.0.0.1:1"], "p", max_message_bytes=None).max_message_bytes is None
    )
