"""Bulk sends (``send_many``, ``group_send_many``): scenarios the core and the Pub/Sub layer's tests both run.

Each scenario checks what arrived against what was sent, in order per channel, and then sends one more message
with the single call and receives it next: a copy delivered twice, or a message left behind, would come first.
``receive`` is the bounded receive fixture; ``server_keys()`` lists the keys of the layer's prefix on every server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.sentinel import GroupSendManyResult, ReplyLost, SendManyResult

from servers.fault_proxy import FaultProxy

Receive = Callable[..., Awaitable[dict[str, Any]]]


def numbered(channel: str, n: int) -> dict[str, Any]:
    return {"type": "bulk.message", "to": channel, "n": n}


async def receive_exactly(
    layer: Any, receive: Receive, expected: dict[str, list[dict[str, Any]]], *, per_group: bool = False
) -> None:
    """Each channel's messages are ``expected[channel]``, in that order, and nothing else is waiting for it.

    ``per_group``: in order among the messages of each group only (``message["group"]``), as a Pub/Sub layer's
    groups are different Pub/Sub names, on different shards, whose messages reach a subscriber on different
    connections.
    """
    for channel, messages in expected.items():
        got = [await receive(layer, channel) for _ in messages]
        if per_group:
            for group in {message["group"] for message in messages}:
                mine = [message for message in got if message.get("group") == group]
                assert mine == [message for message in messages if message["group"] == group], (
                    f"{channel}: {got}"
                )
        else:
            assert got == messages, f"{channel}: {got} != {messages}"
        await layer.send(channel, {"type": "bulk.end"})
        assert await receive(layer, channel) == {"type": "bulk.end"}, f"{channel} got more than was sent"


async def every_message_arrives_once_in_order(layer: Any, receive: Receive, normal: list[str]) -> None:
    """Messages to normal channels and to process channels, interleaved, arrive once each, in order per channel."""
    channels = [*normal, *[await layer.new_channel() for _ in range(3)]]
    pairs = [(channel, numbered(channel, n)) for n in range(20) for channel in channels]
    result = await layer.send_many(iter(pairs))  # any iterable, read once
    assert result == SendManyResult(sent=len(pairs), full=())
    await receive_exactly(
        layer, receive, {channel: [numbered(channel, n) for n in range(20)] for channel in channels}
    )
    sent = layer.stats()["sent"]
    assert (sent["normal"], sent["process"]) == (20 * len(normal) + len(normal), 20 * 3 + 3)


async def full_channels_are_reported_not_written(make_layer: Callable[..., Any], receive: Receive) -> None:
    """A channel at capacity refuses the rest of its messages, reported in order; the others all go out.

    (One call: the core layer puts a normal channel's messages of one call on one shard, but each call, like each
    send, on the next shard, and capacity counts the queue of a shard.)
    """
    layer = make_layer(capacity=3)
    pairs = [("bulk.full", numbered("bulk.full", n)) for n in range(5)]
    pairs[1:1] = [("bulk.other", numbered("bulk.other", n)) for n in range(3)]
    result = await layer.send_many(pairs)
    assert result.sent == 6
    assert result.full == (("bulk.full", numbered("bulk.full", 3)), ("bulk.full", numbered("bulk.full", 4)))
    assert result.full_channels == ("bulk.full",)
    assert layer.stats()["sent"]["normal"] == 6
    await receive_exactly(
        layer,
        receive,
        {
            "bulk.full": [numbered("bulk.full", n) for n in range(3)],
            "bulk.other": [numbered("bulk.other", n) for n in range(3)],
        },
    )


#: Bad pairs, each after a good one, and what the error must name.
BAD_PAIRS: list[tuple[Any, type[Exception], str]] = [
    (("bad name!!", {"type": "x"}), TypeError, r"pairs\[1\]: invalid channel name 'bad name!!'"),
    (("bulk.ok", ["not", "a", "dict"]), TypeError, r"pairs\[1\]: message must be a dict, not list"),
    (("bulk.ok", {"__asgi_channel__": "x"}), ValueError, r"pairs\[1\]: .*'__asgi_channel__'"),
    (("bulk.ok",), TypeError, r"pairs\[1\] must be a \(name, message\) pair"),
]


async def bad_pairs_raise_before_anything_is_written(
    layer: Any, server_keys: Callable[[], list[bytes]]
) -> None:
    """A bad pair anywhere raises, naming it, and nothing of the call reaches the server: not even the good
    pair before it, to a worker channel whose queue would show as a key."""
    assert server_keys() == []
    for bad, error, message in BAD_PAIRS:
        with pytest.raises(error, match="send_many: " + message):
            await layer.send_many([("bulk.good", {"type": "x"}), bad])
    group_bad = [
        (("bad group!", {"type": "x"}), TypeError, r"pairs\[1\]: invalid group name 'bad group!'"),
        *[(pair, error, message) for pair, error, message in BAD_PAIRS[1:]],
    ]
    for bad, error, message in group_bad:
        with pytest.raises(error, match="group_send_many: " + message):
            await layer.group_send_many([("bulk-room", {"type": "x"}), bad])
    with pytest.raises(TypeError, match=r"send_many takes an iterable of .* not dict"):
        await layer.send_many({"bulk.good": {"type": "x"}})
    assert server_keys() == []
    assert layer.stats()["sent"] == {"normal": 0, "process": 0, "group": 0}
    assert await layer.send_many([]) == SendManyResult(0, ())
    assert await layer.group_send_many([]) == GroupSendManyResult(0, {})


async def groups_of_process_channels(layer: Any, receive: Receive, *, per_group: bool = False) -> None:
    """Each member gets the messages of its groups in the order of the pairs (``per_group``: in the order of its
    group's pairs; see :func:`receive_exactly`); a group given twice gets both."""
    channels = [await layer.new_channel() for _ in range(6)]
    groups = {f"bulk-room{index}": channels[index : index + 3] for index in range(5)}
    for group, members in groups.items():
        for channel in members:
            await layer.group_add(group, channel)
    pairs = [(group, {"type": "bulk.group", "group": group, "n": n}) for n in range(3) for group in groups]
    pairs.append(("bulk-empty-room", {"type": "bulk.group", "group": "nobody"}))
    result = await layer.group_send_many(pairs)
    assert result == GroupSendManyResult(sent=len(pairs), over_capacity={})
    expected = {
        channel: [message for group, message in pairs if channel in groups.get(group, [])]
        for channel in channels
    }
    await receive_exactly(layer, receive, expected, per_group=per_group)
    assert layer.stats()["sent"]["group"] == len(pairs)


async def encrypted(make_layer: Callable[..., Any], receive: Receive, normal: str) -> None:
    """With encryption both bulk calls send what the layer's receive decrypts."""
    layer = make_layer(symmetric_encryption_keys=["a long random secret for the bulk tests"])
    process = await layer.new_channel()
    await layer.group_add("bulk-secret-room", process)
    result = await layer.send_many(
        [(normal, {"type": "secret", "n": 1}), (process, {"type": "secret", "n": 2})]
    )
    assert result.sent == 2
    assert (await layer.group_send_many([("bulk-secret-room", {"type": "secret", "n": 3})])).sent == 1
    await receive_exactly(
        layer,
        receive,
        {
            normal: [{"type": "secret", "n": 1}],
            process: [{"type": "secret", "n": 2}, {"type": "secret", "n": 3}],
        },
    )


async def reply_lost_is_not_sent_again(
    layer_class: type[Any], fault_proxy: FaultProxy, server_url: str, key_prefix: str, done: str
) -> None:
    """A ``send_many`` whose connection is cut after its messages arrived raises ``ReplyLost`` (saying how many
    of them were confirmed: ``0 of 2 messages {done}``) and sends nothing again; the next send works."""
    sender = layer_class(hosts=[fault_proxy.url()], prefix=key_prefix)
    receiver = layer_class(hosts=[server_url], prefix=key_prefix)
    try:
        await sender.send_many([("work", {"type": "warm up"})])
        assert await asyncio.wait_for(receiver.receive("work"), 5) == {"type": "warm up"}
        fault_proxy.set_latency(0.5)
        sending = asyncio.create_task(sender.send_many([("work", {"n": 1}), ("work", {"n": 2})]))
        assert [await asyncio.wait_for(receiver.receive("work"), 5) for _ in range(2)] == [{"n": 1}, {"n": 2}]
        assert not sending.done()
        fault_proxy.cut()
        fault_proxy.set_latency(0)
        with pytest.raises(ReplyLost, match=rf"send_many \(0 of 2 messages {done}\): the connection failed"):
            await asyncio.wait_for(sending, 10)
        await sender.send("work", {"type": "next"})
        assert await asyncio.wait_for(receiver.receive("work"), 5) == {"type": "next"}
        assert sender.stats()["sent"]["normal"] == 2  # the warm-up and "next"
    finally:
        await sender.flush()
        await sender.close_pools()
        await receiver.close_pools()
