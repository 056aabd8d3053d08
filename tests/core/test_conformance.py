"""The core layer behaves as the channel layer spec and its peers (channels_redis 4, channels-valkey 0.3) do.

Every test runs on one server, on three shards, behind Sentinel and on a Valkey Cluster (where every key carries a
hash tag: ``{prefix}{{channel}}``). Where sharding changes what a user sees it
is written out: a normal channel is sent round-robin over the shards, so its order and its capacity hold per
shard, as with the peers; a process channel lives on one shard and keeps both exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from channels_valkey.core import ChannelFull, ValkeyChannelLayer
from channels_valkey.serializers import MessageDecodeError

if TYPE_CHECKING:
    from core.conftest import Topology

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]
MakeLayer = Callable[..., ValkeyChannelLayer]

#: Longest wait for a message that was sent, or for a flush.
RECEIVE_TIMEOUT = 10.0


def _process_queue(layer: ValkeyChannelLayer, channel: str, topology: Topology) -> str:
    """The server key of a process channel: ``{prefix}name!``, shared by every channel of that process."""
    key = topology.queue_key(layer.prefix, channel)
    assert layer.queue_key(channel) == key
    return key


async def _fill(layer: ValkeyChannelLayer, channel: str, limit: int = 1000) -> int:
    """Send to ``channel`` until ChannelFull; how many sends were accepted."""
    for sent in range(limit):
        try:
            await layer.send(channel, {"type": "fill", "n": sent})
        except ChannelFull:
            return sent
    pytest.fail(f"{channel!r} accepted {limit} messages without ChannelFull")


async def _nothing_arrives(layer: ValkeyChannelLayer, channel: str, timeout: float = 0.5) -> None:
    with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from Python 3.11 on, not on 3.10
        await asyncio.wait_for(layer.receive(channel), timeout)


# Sending and receiving ---------------------------------------------------------------------------------------------


async def test_send_receive_normal_channel(layer: ValkeyChannelLayer, receive: Receive) -> None:
    await layer.send("conformance.normal", {"type": "test.message", "text": "hello"})
    assert await receive(layer, "conformance.normal") == {"type": "test.message", "text": "hello"}


async def test_send_receive_process_channel(layer: ValkeyChannelLayer, receive: Receive) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "hello"})
    # The routing key the layer adds is stripped before the consumer sees the message.
    assert await receive(layer, channel) == {"type": "test.message", "text": "hello"}


async def test_receive_waits_for_a_later_send(
    layer: ValkeyChannelLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    before = topology.blocked_clients()
    channel = await layer.new_channel()
    waiting = asyncio.ensure_future(receive(layer, channel))
    normal = asyncio.ensure_future(receive(layer, "conformance.later"))
    await eventually(
        lambda: topology.blocked_clients() >= before + topology.shard_count, "the receives to block"
    )
    await layer.send(channel, {"type": "late", "to": "process"})
    await layer.send("conformance.later", {"type": "late", "to": "normal"})
    assert await waiting == {"type": "late", "to": "process"}
    assert await normal == {"type": "late", "to": "normal"}


async def test_receives_on_different_channels_do_not_wait_for_each_other(
    layer: ValkeyChannelLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    before = topology.blocked_clients()
    idle_process = asyncio.ensure_future(layer.receive(await layer.new_channel("idle")))
    idle_normal = asyncio.ensure_future(layer.receive("conformance.idle"))
    # Nothing is sent to those two: wait until the server holds their blocking pops (on every shard, for the
    # normal channel), then receive on other channels of the same shards.
    await eventually(
        lambda: topology.blocked_clients() >= before + topology.shard_count, "the idle receives to block"
    )
    busy = await layer.new_channel()
    await layer.send(busy, {"type": "busy"})
    await layer.send("conformance.busy", {"type": "busy"})
    # Far below the 5 s a blocking pop waits: a receive must not queue behind another channel's pop.
    assert await receive(layer, busy, timeout=2.0) == {"type": "busy"}
    assert await receive(layer, "conformance.busy", timeout=2.0) == {"type": "busy"}
    assert not idle_process.done()
    assert not idle_normal.done()
    idle_process.cancel()
    idle_normal.cancel()
    await asyncio.gather(idle_process, idle_normal, return_exceptions=True)


async def test_process_channel_fifo(layer: ValkeyChannelLayer, receive: Receive) -> None:
    channel = await layer.new_channel()
    for index in range(50):
        await layer.send(channel, {"type": "seq", "n": index})
    received = [(await receive(layer, channel))["n"] for _ in range(50)]
    assert received == list(range(50))


async def test_normal_channel_fifo(layer: ValkeyChannelLayer, receive: Receive, topology: Topology) -> None:
    for index in range(50):
        await layer.send("conformance.fifo", {"type": "seq", "n": index})
    received = [(await receive(layer, "conformance.fifo"))["n"] for _ in range(50)]
    assert sorted(received) == list(range(50))
    # Sends go round-robin over the shards, so order holds among the messages of one shard (every
    # shard_count-th message); with one shard that is the whole sequence.
    for shard in range(topology.shard_count):
        same_shard = [n for n in received if n % topology.shard_count == shard]
        assert same_shard == sorted(same_shard)


async def test_two_readers_of_a_normal_channel_share_its_messages(
    make_layer: MakeLayer, receive: Receive
) -> None:
    first, second = make_layer(), make_layer()
    readers = [
        asyncio.ensure_future(receive(reader, "conformance.shared")) for reader in (first, second) * 10
    ]
    for index in range(20):
        await first.send("conformance.shared", {"type": "work", "n": index})
    received = await asyncio.gather(*readers)
    # Each message goes to exactly one reader.
    assert sorted(message["n"] for message in received) == list(range(20))


async def test_process_channels_of_one_process_do_not_mix(
    layer: ValkeyChannelLayer, receive: Receive
) -> None:
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.send(first, {"type": "to", "who": "first"})
    await layer.send(second, {"type": "to", "who": "second"})
    await layer.send(first, {"type": "to", "who": "first-again"})
    # Receiving the second channel first makes the shared queue's reader buffer the first channel's messages.
    assert await receive(layer, second) == {"type": "to", "who": "second"}
    assert await receive(layer, first) == {"type": "to", "who": "first"}
    assert await receive(layer, first) == {"type": "to", "who": "first-again"}


async def test_new_channel_format_and_uniqueness(layer: ValkeyChannelLayer, hosts: list[Any]) -> None:
    default = await layer.new_channel()
    assert re.fullmatch(rf"specific\.{re.escape(layer.client_prefix)}![0-9a-f]+", default)
    custom = await layer.new_channel(prefix="chat.room_1")
    assert re.fullmatch(rf"chat\.room_1\.{re.escape(layer.client_prefix)}![0-9a-f]+", custom)
    names = {await layer.new_channel() for _ in range(1000)}
    assert len(names) == 1000
    # Two layers (two processes) never share the part before the "!".
    other = ValkeyChannelLayer(hosts=hosts, prefix=layer.prefix)
    assert other.client_prefix != layer.client_prefix


# Groups ------------------------------------------------------------------------------------------------------------


async def test_group_add_send_discard(
    layer: ValkeyChannelLayer, receive: Receive, topology: Topology
) -> None:
    process = await layer.new_channel()
    await layer.group_add("conformance-group", process)
    await layer.group_add("conformance-group", "conformance.member")
    assert sorted(await layer.group_channels("conformance-group")) == sorted([process, "conformance.member"])

    await layer.group_send("conformance-group", {"type": "group.message", "n": 1})
    assert await receive(layer, process) == {"type": "group.message", "n": 1}
    assert await receive(layer, "conformance.member") == {"type": "group.message", "n": 1}

    await layer.group_discard("conformance-group", "conformance.member")
    assert await layer.group_channels("conformance-group") == [process]
    await layer.group_send("conformance-group", {"type": "group.message", "n": 2})
    assert await receive(layer, process) == {"type": "group.message", "n": 2}
    # group_send has returned, so what it wrote is on the server: nothing for the discarded channel.
    assert topology.count(topology.queue_key(layer.prefix, "conformance.member")) == 0

    # Discarding what is not there is not an error.
    await layer.group_discard("conformance-group", "conformance.never-added")
    await layer.group_discard("conformance-never-made", "conformance.member")


async def test_group_keys_on_the_server(layer: ValkeyChannelLayer, topology: Topology) -> None:
    before = time.time()
    await layer.group_add("conformance-keys", "conformance.a")
    key = topology.group_key(layer.prefix, "conformance-keys")
    with topology.server_of(layer.consistent_hash("conformance-keys"), key).client() as client:
        members = client.zrange(key, 0, -1, withscores=True)
    assert [member for member, _ in members] == [b"conformance.a"]
    assert before <= members[0][1] <= time.time()


async def test_group_channels_of_unknown_group_is_empty(layer: ValkeyChannelLayer) -> None:
    assert await layer.group_channels("conformance-nobody") == []


async def test_group_send_to_empty_group(layer: ValkeyChannelLayer, topology: Topology) -> None:
    await layer.group_send("conformance-empty", {"type": "nobody"})
    assert topology.keys(layer.prefix) == []


async def test_group_send_one_copy_per_process_channel(
    layer: ValkeyChannelLayer, receive: Receive, topology: Topology
) -> None:
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("conformance-same-process", channel)
    await layer.group_send("conformance-same-process", {"type": "fanout"})
    # One message in the process's shared queue names all three channels (as the peers write it).
    assert topology.count(_process_queue(layer, channels[0], topology)) == 1

    for channel in channels:
        assert await receive(layer, channel) == {"type": "fanout"}
    # A marker sent after the group message arrives next: there was no second copy before it.
    for channel in channels:
        await layer.send(channel, {"type": "marker"})
    for channel in channels:
        assert await receive(layer, channel) == {"type": "marker"}


async def test_group_send_to_process_and_normal_channels_of_two_layers(
    make_layer: MakeLayer, receive: Receive
) -> None:
    first, second = make_layer(), make_layer()
    first_channel, second_channel = await first.new_channel(), await second.new_channel()
    await first.group_add("conformance-mixed", first_channel)
    await second.group_add("conformance-mixed", second_channel)
    await first.group_add("conformance-mixed", "conformance.shared-normal")
    await second.group_send("conformance-mixed", {"type": "all", "from": "second"})
    assert await receive(first, first_channel) == {"type": "all", "from": "second"}
    assert await receive(second, second_channel) == {"type": "all", "from": "second"}
    assert await receive(second, "conformance.shared-normal") == {"type": "all", "from": "second"}


async def test_group_add_twice_keeps_one_member(layer: ValkeyChannelLayer, receive: Receive) -> None:
    channel = await layer.new_channel()
    await layer.group_add("conformance-twice", channel)
    await layer.group_add("conformance-twice", channel)
    assert await layer.group_channels("conformance-twice") == [channel]
    await layer.group_send("conformance-twice", {"type": "once"})
    await layer.send(channel, {"type": "marker"})
    assert await receive(layer, channel) == {"type": "once"}
    assert await receive(layer, channel) == {"type": "marker"}


# Capacity ----------------------------------------------------------------------------------------------------------


async def test_channel_full_at_capacity_process_channel(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    sender, receiver = make_layer(capacity=3), make_layer(capacity=3)
    channel = await receiver.new_channel()
    queue = _process_queue(sender, channel, topology)
    assert await _fill(sender, channel) == 3
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "one too many"})
    # Receiving makes room again. The receiving process's reader drains its queue into local buffers and keeps
    # popping for a moment after, so it is stopped before counting: the room is what the server queue lost.
    assert (await receive(receiver, channel))["n"] == 0
    await receiver.close_pools()
    room = 3 - topology.count(queue)
    assert room >= 1, "receiving left the process queue full"
    for n in range(room):
        await sender.send(channel, {"type": "room again", "n": n})
    # Full again: the room made is all there is.
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "one too many again"})
    assert topology.count(queue) == 3
    # What the reader drained before close_pools was kept for the next receive, in order, before the new ones.
    assert [await receive(receiver, channel) for _ in range(2)] == [
        {"type": "fill", "n": 1},
        {"type": "fill", "n": 2},
    ]
    assert (await receive(receiver, channel))["type"] == "room again"


async def test_channel_full_at_capacity_normal_channel(make_layer: MakeLayer, topology: Topology) -> None:
    layer = make_layer(capacity=3)
    # Capacity is counted per shard queue and normal channels are sent round-robin (as with the peers), so a
    # sharded layer takes capacity messages on each shard before refusing.
    assert await _fill(layer, "conformance.full") == 3 * topology.shard_count
    assert topology.count(topology.queue_key(layer.prefix, "conformance.full")) == 3 * topology.shard_count


async def test_process_channels_of_one_process_share_capacity(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=3)
    first, second = await layer.new_channel(), await layer.new_channel()
    assert await _fill(layer, first) == 3
    with pytest.raises(ChannelFull):
        await layer.send(second, {"type": "shared queue is full"})


async def test_channel_capacity_globs(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=3, channel_capacity={"small.*": 2, "big*": 7})
    assert layer.get_capacity("small.x") == 2
    assert await _fill(layer, await layer.new_channel("small")) == 2
    assert await _fill(layer, await layer.new_channel("big.one")) == 7
    assert await _fill(layer, await layer.new_channel("other")) == 3


async def test_channel_capacity_regex_first_match_wins(make_layer: MakeLayer) -> None:
    layer = make_layer(
        capacity=3, channel_capacity={re.compile(r"^tiny"): 1, "tin*": 4, re.compile(r"t"): 6, "tiny*": 9}
    )
    assert await _fill(layer, await layer.new_channel("tiny")) == 1
    assert await _fill(layer, await layer.new_channel("tint")) == 4
    assert await _fill(layer, await layer.new_channel("tall")) == 6
    assert await _fill(layer, await layer.new_channel("other")) == 3


async def test_group_send_over_capacity_drops_and_counts(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    layer = make_layer(capacity=2)
    full, spare = make_layer(capacity=2), make_layer(capacity=2)
    full_channel, spare_channel = await full.new_channel(), await spare.new_channel()
    assert await _fill(layer, full_channel) == 2
    await layer.group_add("conformance-cap", full_channel)
    await layer.group_add("conformance-cap", spare_channel)

    await layer.group_send("conformance-cap", {"type": "maybe"})  # no exception: dropped for the full one

    assert layer.counters.group_over_capacity == 1
    assert topology.count(_process_queue(layer, full_channel, topology)) == 2
    assert await receive(spare, spare_channel) == {"type": "maybe"}
    assert [(await receive(full, full_channel))["n"] for _ in range(2)] == [0, 1]


# Expiry ------------------------------------------------------------------------------------------------------------


async def test_message_expires_on_the_server(make_layer: MakeLayer, topology: Topology) -> None:
    layer = make_layer(expiry=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "stale soon"})
    await layer.send("conformance.expiring", {"type": "stale soon"})
    # Both were stored: a send that dropped them would otherwise pass for expiry.
    assert topology.count(_process_queue(layer, channel, topology)) == 1
    assert topology.count(topology.queue_key(layer.prefix, "conformance.expiring")) == 1
    await asyncio.sleep(1.1)  # the passing of time is what expires the messages
    await _nothing_arrives(layer, channel)
    await _nothing_arrives(layer, "conformance.expiring")


async def test_stale_message_on_the_server_is_dropped_and_counted(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    layer = make_layer(expiry=30)
    key = topology.queue_key(layer.prefix, "conformance.stale")
    # A message written 60 s ago that nobody took (its key was kept alive by later sends).
    with topology.server_of(0, key).client() as client:
        client.zadd(key, {layer.serialize({"type": "stale"}): time.time() - 60})
    waiting = asyncio.ensure_future(receive(layer, "conformance.stale"))
    await eventually(lambda: layer.counters.expired == 1, "the stale message to be counted as expired")
    await layer.send("conformance.stale", {"type": "fresh"})
    assert await waiting == {"type": "fresh"}


async def test_message_expires_in_the_local_buffer(make_layer: MakeLayer, receive: Receive) -> None:
    layer = make_layer(expiry=1)
    buffered, wanted = await layer.new_channel(), await layer.new_channel()
    await layer.send(buffered, {"type": "left in the buffer"})
    await layer.send(wanted, {"type": "taken"})
    # Both share one queue: receiving the second pulls the first into this process's buffer.
    assert await receive(layer, wanted) == {"type": "taken"}
    await asyncio.sleep(1.1)  # the passing of time is what expires the buffered message
    await _nothing_arrives(layer, buffered)
    assert layer.counters.expired == 1


async def test_group_member_older_than_group_expiry_is_not_sent_to(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    layer = make_layer(group_expiry=1)
    old = await layer.new_channel()
    await layer.group_add("conformance-gexp", old)
    await asyncio.sleep(1.1)  # the passing of time is what expires the membership
    young = await layer.new_channel("young")
    await layer.group_add("conformance-gexp", young)
    assert await layer.group_channels("conformance-gexp") == [young]
    await layer.group_send("conformance-gexp", {"type": "only young"})
    assert await receive(layer, young) == {"type": "only young"}
    assert topology.count(_process_queue(layer, old, topology)) == 0


async def test_group_member_with_old_score_is_not_sent_to(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    layer = make_layer(group_expiry=60)
    await layer.group_add("conformance-gold", "conformance.fresh-member")
    # A member added two minutes ago (by a process that has since gone), in a group key kept alive since.
    key = topology.group_key(layer.prefix, "conformance-gold")
    with topology.server_of(layer.consistent_hash("conformance-gold"), key).client() as client:
        client.zadd(key, {"conformance.old-member": time.time() - 120})
    assert await layer.group_channels("conformance-gold") == ["conformance.fresh-member"]
    await layer.group_send("conformance-gold", {"type": "fresh only"})
    assert await receive(layer, "conformance.fresh-member") == {"type": "fresh only"}
    assert topology.count(topology.queue_key(layer.prefix, "conformance.old-member")) == 0


# Payloads and serialization ----------------------------------------------------------------------------------------


async def test_large_message_round_trip(layer: ValkeyChannelLayer, receive: Receive) -> None:
    payload = os.urandom(1_500_000)
    message = {"type": "large", "bytes": payload, "text": "é" * 300_000}
    channel = await layer.new_channel()
    await layer.send(channel, message)
    await layer.send("conformance.large", message)
    assert await receive(layer, channel) == message
    assert await receive(layer, "conformance.large") == message


def test_extensions(layer: ValkeyChannelLayer) -> None:
    assert layer.extensions == ["groups", "flush"]


def test_serialize_round_trip(layer: ValkeyChannelLayer) -> None:
    message = {
        "type": "test.types",
        "text": "héllo",
        "bytes": b"\x00\xff",
        "int": -(2**40),
        "float": 1.5,
        "bool": True,
        "none": None,
        "list": [1, "two", [3]],
        "nested": {"a": {"b": []}},
    }
    first, second = layer.serialize(message), layer.serialize(message)
    assert isinstance(first, bytes)
    # A random prefix keeps two equal messages apart in a sorted set.
    assert first != second
    assert layer.deserialize(first) == message
    assert layer.deserialize(second) == message


async def test_symmetric_encryption(make_layer: MakeLayer, receive: Receive, topology: Topology) -> None:
    layer = make_layer(symmetric_encryption_keys=["current-secret", "previous-secret"])
    message = {"type": "secret", "text": "plaintext-marker-4217"}
    await layer.send("conformance.secret", message)
    stored = topology.members(topology.queue_key(layer.prefix, "conformance.secret"))
    assert len(stored) == 1
    assert b"plaintext-marker-4217" not in stored[0]
    assert b"secret" not in stored[0]
    assert await receive(layer, "conformance.secret") == message

    # Key rotation: what a layer still on the old key wrote is read by one that lists it second.
    old = make_layer(symmetric_encryption_keys=["previous-secret"])
    assert layer.deserialize(old.serialize(message)) == message
    stranger = make_layer(symmetric_encryption_keys=["another-secret"])
    with pytest.raises(MessageDecodeError):
        stranger.deserialize(layer.serialize(message))


async def test_message_with_another_key_is_skipped_and_counted(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually
) -> None:
    writer = make_layer(symmetric_encryption_keys=["writer-secret"])
    reader = make_layer(symmetric_encryption_keys=["reader-secret"])
    channel = await reader.new_channel()
    await writer.send(channel, {"type": "unreadable"})
    waiting = asyncio.ensure_future(receive(reader, channel))
    await eventually(lambda: reader.counters.undecodable == 1, "the unreadable message to be counted")
    await reader.send(channel, {"type": "readable"})
    assert await waiting == {"type": "readable"}


async def test_json_serializer(make_layer: MakeLayer, receive: Receive, topology: Topology) -> None:
    layer = make_layer(serializer_format="json")
    message = {"type": "json.message", "text": "héllo", "list": [1, 2.5, None, True]}
    await layer.send("conformance.json", message)
    stored = topology.members(topology.queue_key(layer.prefix, "conformance.json"))
    assert len(stored) == 1
    # 12 random bytes, then the JSON the peers write.
    assert json.loads(stored[0][12:]) == message
    assert await receive(layer, "conformance.json") == message

    channel = await layer.new_channel()
    await layer.group_add("conformance-json", channel)
    await layer.group_send("conformance-json", message)
    assert await receive(layer, channel) == message


# Flush -------------------------------------------------------------------------------------------------------------


async def test_flush_deletes_only_this_prefix(
    layer: ValkeyChannelLayer, receive: Receive, topology: Topology, key_prefix: str
) -> None:
    bystanders = [key_prefix + "other", key_prefix + "asg", "x" + layer.prefix]
    for key in bystanders:
        for server in topology.holders(key):
            with server.client() as client:
                client.set(key, b"keep", ex=120)

    process = await layer.new_channel()
    for index in range(5):
        await layer.send(f"conformance.flush-{index}", {"type": "flushed"})
        await layer.send(process, {"type": "flushed"})
    await layer.group_add("conformance-flush", process)
    assert topology.keys(layer.prefix)

    await layer.flush()

    assert topology.keys(layer.prefix) == []
    for key in bystanders:
        for server in topology.holders(key):
            with server.client() as client:
                assert client.get(key) == b"keep"
                client.delete(key)
    assert await layer.group_channels("conformance-flush") == []

    # Still usable afterwards.
    await layer.send("conformance.after-flush", {"type": "after"})
    assert await receive(layer, "conformance.after-flush") == {"type": "after"}
    await layer.send(process, {"type": "after"})
    assert await receive(layer, process) == {"type": "after"}


class _MinuteBlockLayer(ValkeyChannelLayer):
    """Blocking pops of a minute, longer than any flush here is given: a flush that waited one out fails."""

    brpop_timeout = 6 * int(RECEIVE_TIMEOUT)


async def test_flush_does_not_wait_for_receives_that_are_starting(
    hosts: list[Any], layer_prefix: str
) -> None:
    # A flush that lands while a receive is still setting up its blocking pop must not wait out the pop's block.
    # The blocks here outlast the time the flush is given, so a flush that waited for one times out. The race
    # window is a few loop turns wide: sweep through it.
    layer = _MinuteBlockLayer(hosts=hosts, prefix=layer_prefix)
    try:
        for attempt in range(60):
            idle = asyncio.ensure_future(layer.receive(f"conformance.idle-{attempt}"))
            for _ in range(attempt % 8):
                await asyncio.sleep(0)
            try:
                await asyncio.wait_for(layer.flush(), RECEIVE_TIMEOUT)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                pytest.fail(f"flush waited for a receive's blocking pop at attempt {attempt}")
            idle.cancel()  # flush leaves waiting receives waiting
            await asyncio.gather(idle, return_exceptions=True)
    finally:
        await asyncio.wait_for(layer.close_pools(), RECEIVE_TIMEOUT)


async def test_flush_prefix_with_glob_characters(
    make_layer: MakeLayer, topology: Topology, key_prefix: str
) -> None:
    layer = make_layer(prefix=key_prefix + "g*[a]?")
    bystander = key_prefix + "gXaY-not-ours"  # matched by the prefix if it were used as a glob unescaped
    for server in topology.holders(bystander):
        with server.client() as client:
            client.set(bystander, b"keep", ex=120)
    await layer.send("conformance.glob", {"type": "flushed"})
    await layer.group_add("conformance-glob", "conformance.glob")
    await layer.flush()
    assert topology.keys(layer.prefix) == []
    for server in topology.holders(bystander):
        with server.client() as client:
            assert client.get(bystander) == b"keep"
            client.delete(bystander)
