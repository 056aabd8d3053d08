"""A group message reaching several local members: decoded once, a dict of its own for each member.

The members of a group in one process (websocket consumers) each get the message; decoding it once per member
would make a fan-out to a thousand members cost a thousand decodes. Each member gets its own top-level dict, so a
consumer that changes its message's keys does not change what the others see; the values inside are shared.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]


class _CountingReads(ValkeyPubSubChannelLayer):
    """Counts the messages it decodes."""

    reads = 0

    def deserialize(self, message: bytes) -> dict[str, Any]:
        self.reads += 1
        return super().deserialize(message)


async def test_a_group_message_is_decoded_once_for_all_local_members(
    valkey_url: str, key_prefix: str, receive: Receive
) -> None:
    layer = _CountingReads(hosts=[valkey_url], prefix=key_prefix)
    try:
        members = [await layer.new_channel() for _ in range(5)]
        for channel in members:
            await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "chat", "tags": ["a", "b"]})
        received = [await receive(layer, channel) for channel in members]
        assert received == [{"type": "chat", "tags": ["a", "b"]}] * 5
        assert layer.reads == 1

        # Each member's dict is its own: a consumer popping a key takes it from its message only.
        received[0].pop("type")
        received[1]["extra"] = True
        assert [sorted(message) for message in received[2:]] == [["tags", "type"]] * 3
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_an_unreadable_group_message_is_counted_once(
    valkey_server: ValkeyProcess, valkey_url: str, key_prefix: str, receive: Receive, eventually: Eventually
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_url], prefix=key_prefix)
    try:
        members = [await layer.new_channel() for _ in range(3)]
        for channel in members:
            await layer.group_add("room", channel)
        with valkey_server.client() as client:
            assert client.publish(layer.group_channel_name("room"), b"\xc1 not msgpack") == 1
        await eventually(lambda: layer.counters.undecodable == 1, "the unreadable message to be counted")
        await layer.group_send("room", {"type": "after"})
        assert [await receive(layer, channel) for channel in members] == [{"type": "after"}] * 3
        assert layer.counters.undecodable == 1
    finally:
        await layer.flush()
        await layer.close_pools()
