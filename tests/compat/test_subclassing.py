"""A subclass of either layer that overrides ``serialize`` / ``deserialize``, as channels-valkey 0.3 allowed, is
used for every message sent and received: normal channels (queued) and process channels alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

Receive = Callable[..., Awaitable[dict[str, Any]]]


class _CoreReadBySubclass(ValkeyChannelLayer):
    def deserialize(self, message: bytes) -> dict[str, Any]:
        return {**super().deserialize(message), "read_by": "subclass"}


class _PubSubReadBySubclass(ValkeyPubSubChannelLayer):
    def deserialize(self, message: bytes) -> dict[str, Any]:
        return {**super().deserialize(message), "read_by": "subclass"}


@pytest.mark.parametrize("layer_class", [_CoreReadBySubclass, _PubSubReadBySubclass])
async def test_a_subclass_deserialize_reads_what_is_received(
    layer_class: type[Any], valkey_url: str, key_prefix: str, receive: Receive
) -> None:
    layer = layer_class(hosts=[valkey_url], prefix=key_prefix)
    try:
        normal = f"{key_prefix}jobs"
        await layer.send(normal, {"type": "normal"})
        assert await receive(layer, normal) == {"type": "normal", "read_by": "subclass"}
        process = await layer.new_channel()
        await layer.send(process, {"type": "process"})
        assert await receive(layer, process) == {"type": "process", "read_by": "subclass"}
    finally:
        await layer.flush()
        await layer.close_pools()
