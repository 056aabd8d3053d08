"""A producer in another language writes messages exactly as the core README's "Publishing from outside Python"
says, here with a plain valkey client and msgpack (no layer code), and the layer receives them: if the layer's
keys, scores or bytes change, this fails and the README must change with them."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from cryptography.fernet import Fernet

from channels_valkey.core import ValkeyChannelLayer

if TYPE_CHECKING:
    from core.conftest import Topology

pytestmark = pytest.mark.parametrize("topology", ["single", "cluster"], indirect=True)

Receive = Callable[..., Awaitable[dict[str, Any]]]


def _queue(topology: Topology, prefix: str, name: str, message: dict[str, Any], expiry: int = 60) -> None:
    """What the README tells a producer to do for one queue: ZADD the member at the current Unix time, EXPIRE."""
    key = f"{prefix}{{{name}}}" if topology.cluster else prefix + name
    member = os.urandom(12) + msgpack.packb(message)
    with topology.server_of(0, key).client() as client:
        client.zadd(key, {member: time.time()})
        client.expire(key, expiry)


async def test_normal_process_and_group_messages_written_outside_are_received(
    layer: ValkeyChannelLayer, topology: Topology, layer_prefix: str, receive: Receive
) -> None:
    _queue(topology, layer_prefix, "outside.jobs", {"type": "outside.job", "n": 1})
    assert await receive(layer, "outside.jobs") == {"type": "outside.job", "n": 1}

    channel = await layer.new_channel()
    name = channel[: channel.index("!") + 1]  # every process channel of a process shares the queue of "name!"
    _queue(topology, layer_prefix, name, {"type": "outside.direct", "__asgi_channel__": channel})
    assert await receive(layer, channel) == {"type": "outside.direct"}

    # A group: read its members, then queue one copy per member (process channels of one process: one copy
    # naming them all).
    other = await layer.new_channel()
    for member in ("outside.member", channel, other):
        await layer.group_add("outside-room", member)
    group_key = (
        f"{layer_prefix}:group:{{outside-room}}" if topology.cluster else f"{layer_prefix}:group:outside-room"
    )
    with topology.server_of(0, group_key).client() as client:
        members = sorted(member.decode() for member in client.zrange(group_key, 0, -1))
    assert members == sorted(["outside.member", channel, other])
    _queue(topology, layer_prefix, "outside.member", {"type": "outside.group"})
    _queue(topology, layer_prefix, name, {"type": "outside.group", "__asgi_channel__": [channel, other]})
    assert await receive(layer, "outside.member") == {"type": "outside.group"}
    assert await receive(layer, channel) == {"type": "outside.group"}
    assert await receive(layer, other) == {"type": "outside.group"}


async def test_an_encrypted_message_written_outside_is_received(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str, receive: Receive
) -> None:
    secret = "a long random secret shared with the producer"
    layer = make_layer(symmetric_encryption_keys=[secret])
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))
    key = f"{layer_prefix}{{outside.secret}}" if topology.cluster else layer_prefix + "outside.secret"
    member = os.urandom(12) + fernet.encrypt(msgpack.packb({"type": "outside.secret"}))
    with topology.server_of(0, key).client() as client:
        client.zadd(key, {member: time.time()})
        client.expire(key, 60)
    assert await receive(layer, "outside.secret") == {"type": "outside.secret"}
