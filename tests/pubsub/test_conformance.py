"""The channel layer contract on every topology: process channels, worker channels, groups, flush, limits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from channels_valkey.pubsub import ChannelFull, ValkeyPubSubChannelLayer

if TYPE_CHECKING:
    from pubsub.conftest import Topology

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]
MakeLayer = Callable[..., ValkeyPubSubChannelLayer]


async def test_process_channel_round_trip(layer: ValkeyPubSubChannelLayer, receive: Receive) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hello", "text": "héllo", "data": b"\x00\xff", "n": [1, 2]})
    assert await receive(layer, channel) == {
        "type": "hello",
        "text": "héllo",
        "data": b"\x00\xff",
        "n": [1, 2],
    }


async def test_new_channel_names_are_process_channels_under_the_prefix(
    layer: ValkeyPubSubChannelLayer, layer_prefix: str
) -> None:
    first, second = await layer.new_channel(), await layer.new_channel("chat.")
    assert first != second
    assert re.fullmatch(re.escape(layer_prefix) + r"specific\.[0-9a-f]{12}![0-9a-f]{32}", first)
    assert second.startswith(layer_prefix + "chat.")
    with pytest.raises(TypeError, match="new_channel prefix 'bad prefix'"):
        await layer.new_channel("bad prefix")


async def test_messages_of_one_channel_keep_their_order(
    layer: ValkeyPubSubChannelLayer, receive: Receive
) -> None:
    channel = await layer.new_channel()
    for n in range(50):
        await layer.send(channel, {"type": "n", "n": n})
    assert [(await receive(layer, channel))["n"] for _ in range(50)] == list(range(50))


async def test_worker_channel_keeps_messages_sent_before_anyone_receives(
    layer: ValkeyPubSubChannelLayer, receive: Receive, topology: Topology, layer_prefix: str
) -> None:
    await layer.send("jobs.resize", {"type": "job", "n": 1})
    assert topology.keys(topology.worker_queue(layer_prefix, "jobs.resize")) != []
    assert await receive(layer, "jobs.resize") == {"type": "job", "n": 1}


async def test_worker_channel_delivers_each_message_once_across_layer_instances(
    make_layer: MakeLayer, receive: Receive
) -> None:
    first, second, sender = make_layer(), make_layer(), make_layer()
    count = 60
    got: dict[str, list[int]] = {"first": [], "second": []}

    async def drain(name: str, layer: ValkeyPubSubChannelLayer) -> None:
        while sum(map(len, got.values())) < count:
            try:
                message = await asyncio.wait_for(layer.receive("jobs"), 0.5)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                continue
            got[name].append(message["n"])

    readers = [asyncio.create_task(drain("first", first)), asyncio.create_task(drain("second", second))]
    for n in range(count):
        await sender.send("jobs", {"type": "job", "n": n})
    await asyncio.wait_for(asyncio.gather(*readers), 20)
    assert sorted(got["first"] + got["second"]) == list(range(count))
    assert got["first"], "both receiving instances should have taken some"
    assert got["second"], "both receiving instances should have taken some"


async def test_worker_channel_in_pubsub_mode_reaches_every_receiver(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    first, second = make_layer(worker_channels="pubsub"), make_layer(worker_channels="pubsub")
    waiting = [asyncio.create_task(receive(layer, "broadcast")) for layer in (first, second)]
    await eventually(lambda: topology.subscribers("broadcast") == 2, "both subscriptions")
    await first.send("broadcast", {"type": "all"})
    assert await asyncio.gather(*waiting) == [{"type": "all"}, {"type": "all"}]


async def test_worker_channel_capacity_raises_channel_full(make_layer: MakeLayer, receive: Receive) -> None:
    layer = make_layer(capacity=3, channel_capacity={"tight.*": 1})
    for n in range(3):
        await layer.send("roomy", {"type": "n", "n": n})
    with pytest.raises(ChannelFull, match="'roomy' is at capacity"):
        await layer.send("roomy", {"type": "n", "n": 3})
    await layer.send("tight.one", {"type": "n"})
    with pytest.raises(ChannelFull):
        await layer.send("tight.one", {"type": "n"})
    assert await receive(layer, "roomy") == {"type": "n", "n": 0}
    await layer.send("roomy", {"type": "n", "n": 4})  # room again, for one message
    with pytest.raises(ChannelFull, match="'roomy' is at capacity"):
        await layer.send("roomy", {"type": "n", "n": 5})
    assert [(await receive(layer, "roomy"))["n"] for _ in range(3)] == [1, 2, 4]


async def test_groups(layer: ValkeyPubSubChannelLayer, receive: Receive, topology: Topology) -> None:
    one, two, outsider = await layer.new_channel(), await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", one)
    await layer.group_add("room", two)
    await layer.group_add("room", two)  # twice is once
    await layer.group_send("room", {"type": "chat", "text": "hi"})
    assert await receive(layer, one) == {"type": "chat", "text": "hi"}
    assert await receive(layer, two) == {"type": "chat", "text": "hi"}
    await layer.group_discard("room", one)
    await layer.group_send("room", {"type": "chat", "text": "second"})
    assert await receive(layer, two) == {"type": "chat", "text": "second"}
    await layer.send(one, {"type": "direct"})
    await layer.send(outsider, {"type": "direct"})
    assert await receive(layer, one) == {"type": "direct"}  # nothing of the group came before it
    assert await receive(layer, outsider) == {"type": "direct"}
    await layer.group_discard("room", "never.joined!x")  # not a member: nothing happens


async def test_last_local_member_leaving_unsubscribes_the_group_at_once(
    layer: ValkeyPubSubChannelLayer, layer_prefix: str, topology: Topology, eventually: Eventually
) -> None:
    one, two = await layer.new_channel(), await layer.new_channel()
    group = layer_prefix + "__group__room"
    await layer.group_add("room", one)
    await layer.group_add("room", two)
    assert topology.subscribers(group) == 1  # one subscription per process, however many members
    await layer.group_discard("room", one)
    assert topology.subscribers(group) == 1
    await layer.group_discard("room", two)
    await eventually(lambda: topology.subscribers(group) == 0, "the group's subscription to go")


async def test_group_add_needs_a_channel_received_here(layer: ValkeyPubSubChannelLayer) -> None:
    with pytest.raises(RuntimeError, match=r"group_add\('room', 'elsewhere!abc'\)"):
        await layer.group_add("room", "elsewhere!abc")


async def test_flush_forgets_everything_and_the_layer_stays_usable(
    layer: ValkeyPubSubChannelLayer,
    receive: Receive,
    topology: Topology,
    layer_prefix: str,
    eventually: Eventually,
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send(channel, {"type": "buffered"})
    await layer.send("jobs", {"type": "queued"})
    await eventually(lambda: layer.loop_state().channels[channel].items, "the message to be buffered")  # type: ignore[union-attr]
    await layer.flush()
    assert topology.keys(layer_prefix) == []
    assert topology.subscriptions(layer_prefix) == 0
    fresh = await layer.new_channel()
    await layer.send(fresh, {"type": "after"})
    assert await receive(layer, fresh) == {"type": "after"}


async def test_flush_keeps_receives_that_are_waiting(
    layer: ValkeyPubSubChannelLayer,
    receive: Receive,
    topology: Topology,
    eventually_blocking: Eventually,
) -> None:
    channel = await layer.new_channel()
    before = topology.blocked_clients()
    waiting = asyncio.create_task(receive(layer, channel))
    # A process channel's receive waits in this process only; a worker channel's blocks on its queue on the
    # server, where it can be seen. The worker receive is started second, so once it blocks both wait.
    waiting_worker = asyncio.create_task(receive(layer, "jobs.waiting"))
    await eventually_blocking(
        lambda: topology.blocked_clients() >= before + 1, "the worker channel's receive to block"
    )
    await layer.flush()
    assert topology.subscribers(channel) == 1  # a waiting receive keeps its channel subscribed
    await layer.send(channel, {"type": "still.there"})
    await layer.send("jobs.waiting", {"type": "still.there"})
    assert await waiting == {"type": "still.there"}
    assert await waiting_worker == {"type": "still.there"}


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_local_buffer_is_bounded_by_capacity(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually
) -> None:
    layer = make_layer(capacity=3)
    channel = await layer.new_channel()
    for n in range(5):
        await layer.send(channel, {"type": "n", "n": n})
    await eventually(lambda: layer.counters.buffer_overflow == 2, "two messages to overflow the buffer")
    assert [(await receive(layer, channel))["n"] for _ in range(3)] == [2, 3, 4]


async def test_local_buffer_is_bounded_by_the_channel_capacity_that_matches(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually
) -> None:
    layer = make_layer(capacity=10, channel_capacity={"*tight.*": 2})  # names start with the layer prefix
    tight, roomy = await layer.new_channel("tight."), await layer.new_channel("roomy.")
    for n in range(4):
        await layer.send(tight, {"type": "n", "n": n})
        await layer.send(roomy, {"type": "n", "n": n})
    await eventually(lambda: layer.counters.buffer_overflow == 2, "two messages to overflow the tight buffer")
    assert [(await receive(layer, tight))["n"] for _ in range(2)] == [2, 3]
    assert [(await receive(layer, roomy))["n"] for _ in range(4)] == [0, 1, 2, 3]
    assert layer.counters.buffer_overflow == 2


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_buffered_messages_expire(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    layer = make_layer(expiry=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "old"})
    await eventually(lambda: layer.counters.expired == 1, "the buffered message to expire", timeout=5)
    waiting = asyncio.create_task(receive(layer, channel))
    state = layer.loop_state()
    assert state is not None
    # The layer's own view: the server's count may still show the old subscription, its UNSUBSCRIBE in flight.
    await eventually(lambda: channel in state.subscribers[0].confirmed, "the receive to subscribe again")
    await layer.send(channel, {"type": "new"})
    assert await waiting == {"type": "new"}


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_worker_messages_older_than_expiry_are_dropped(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually
) -> None:
    layer = make_layer(expiry=1)
    await layer.send("slow.jobs", {"type": "stale"})
    await asyncio.sleep(1.2)  # the message must be older than expiry: this is the condition under test
    await layer.send("slow.jobs", {"type": "fresh"})
    assert await receive(layer, "slow.jobs") == {"type": "fresh"}


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_idle_channel_is_unsubscribed_and_freed(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually, topology: Topology, layer_prefix: str
) -> None:
    layer = make_layer(expiry=1)
    idle, busy = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", idle)
    await layer.group_add("solo", idle)
    await layer.group_add("room", busy)
    await layer.send(idle, {"type": "never.received"})
    waiting = asyncio.create_task(receive(layer, busy, 30))
    state = layer.loop_state()
    assert state is not None
    await eventually(lambda: idle not in state.channels, "the idle channel to be dropped", timeout=5)
    assert layer.counters.expired == 1
    await eventually(
        lambda: topology.subscribers(idle) + topology.subscribers(layer_prefix + "__group__solo") == 0,
        "the idle channel's and its lone group's subscriptions to go",
    )
    assert topology.subscribers(layer_prefix + "__group__room") == 1  # busy is still a member
    assert busy in state.channels  # a receive is waiting on it: not idle
    await layer.group_send("room", {"type": "still.here"})
    assert await waiting == {"type": "still.here"}


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_a_consumer_that_never_waits_is_not_idle(
    make_layer: MakeLayer, receive: Receive, eventually: Eventually, topology: Topology
) -> None:
    # A busy consumer may find a message waiting every time it receives: taking it counts as being alive.
    layer = make_layer(expiry=1)
    channel = await layer.new_channel()
    state = layer.loop_state()
    assert state is not None
    deadline = (
        asyncio.get_running_loop().time() + 2.5
    )  # past two sweeps that would find it idle since it was made
    sent = 0
    while asyncio.get_running_loop().time() < deadline:
        await layer.send(channel, {"type": "busy", "n": sent})
        sent += 1
        await eventually(lambda: bool(state.channels[channel].items), "the message to wait in the buffer")
        assert await receive(layer, channel) == {"type": "busy", "n": sent - 1}
        await asyncio.sleep(0.1)
    assert channel in state.channels
    assert topology.subscribers(channel) == 1


async def test_invalid_names_and_messages_are_refused_naming_the_value(
    layer: ValkeyPubSubChannelLayer,
) -> None:
    for bad in ["", "has space", "x" * 100, "two!!bangs", "trailing\n", 7, "ünïcode"]:
        with pytest.raises(TypeError, match="invalid channel name"):
            await layer.send(bad, {"type": "x"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=re.escape(repr(bad))):
            await layer.receive(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="invalid group name 'bad!group'"):
        await layer.group_send("bad!group", {"type": "x"})
    with pytest.raises(TypeError, match="invalid group name"):
        await layer.group_add("a b", "ok")
    with pytest.raises(TypeError, match="message must be a dict, not str"):
        await layer.send("ok", "not a dict")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message must be a dict, not list"):
        await layer.group_send("ok", [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await layer.send("ok", {"type": "x", "__asgi_channel__": "y"})


def test_unknown_and_bad_options_are_refused_naming_them(hosts: list[Any]) -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'brpop_timeout', 'capacty'"):
        ValkeyPubSubChannelLayer(hosts=hosts, capacty=10, brpop_timeout=1)
    # The core layer's option that Pub/Sub payloads have no use for: refused, not silently ignored.
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'random_prefix_length'"):
        ValkeyPubSubChannelLayer(hosts=hosts, random_prefix_length=12)
    with pytest.raises(ValueError, match="capacity must be a whole number >= 1, not 0"):
        ValkeyPubSubChannelLayer(hosts=hosts, capacity=0)
    with pytest.raises(ValueError, match=r"expiry must be a whole number >= 1, not 1\.5"):
        ValkeyPubSubChannelLayer(hosts=hosts, expiry=1.5)
    with pytest.raises(ValueError, match=r"channel_capacity\['x'\] must be a whole number >= 1, not -1"):
        ValkeyPubSubChannelLayer(hosts=hosts, channel_capacity={"x": -1})
    with pytest.raises(ValueError, match="worker_channels must be 'queue' or 'pubsub', not 'both'"):
        ValkeyPubSubChannelLayer(hosts=hosts, worker_channels="both")
    with pytest.raises(TypeError, match="on_disconnect must be a message type"):
        ValkeyPubSubChannelLayer(hosts=hosts, on_disconnect=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix must be a str, not 5"):
        ValkeyPubSubChannelLayer(hosts=hosts, prefix=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hosts"):
        ValkeyPubSubChannelLayer(hosts="valkey://localhost")


def test_extensions_are_readable_without_an_event_loop(hosts: list[Any]) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=hosts)
    assert layer.extensions == ["groups", "flush"]
    assert ValkeyPubSubChannelLayer.extensions == ["groups", "flush"]


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_undecodable_payloads_are_counted_and_skipped(
    make_layer: MakeLayer, receive: Receive, topology: Topology
) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    with topology.servers[0].client() as client:
        client.publish(channel, b"\xc1 not msgpack")
    await layer.send(channel, {"type": "good"})
    assert await receive(layer, channel) == {"type": "good"}
    assert layer.counters.undecodable == 1


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_encrypted_layers_share_messages(make_layer: MakeLayer, receive: Receive) -> None:
    sender = make_layer(symmetric_encryption_keys=["new-key", "old-key"])
    receiver = make_layer(symmetric_encryption_keys=["old-key"])
    channel = await receiver.new_channel()
    await make_layer(symmetric_encryption_keys=["old-key"]).send(channel, {"type": "secret"})
    assert await receive(receiver, channel) == {"type": "secret"}
    await sender.send("jobs", {"type": "queued.secret"})
    assert await receive(make_layer(symmetric_encryption_keys=["new-key"]), "jobs") == {
        "type": "queued.secret"
    }
