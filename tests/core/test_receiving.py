"""What leaves the server, and when: a normal channel's messages stay in its queue until a receive asks for one,
so capacity counts what waits (as channels-valkey 0.3 counts it) and anyone looking at the queue sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from channels_valkey.core import ChannelFull, ForeignChannelError, ValkeyChannelLayer

from servers.process import ValkeyProcess

if TYPE_CHECKING:
    from core.conftest import Topology

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]
MakeLayer = Callable[..., ValkeyChannelLayer]

#: Topologies where a normal channel is one queue (on a sharded layer it is one queue per shard, sent round-robin).
ONE_QUEUE = pytest.mark.parametrize("topology", ["single", "sentinel", "cluster"], indirect=True)


async def _send_numbered(layer: ValkeyChannelLayer, channel: str, count: int) -> None:
    for n in range(count):
        await layer.send(channel, {"type": "n", "n": n})


@ONE_QUEUE
async def test_capacity_holds_while_a_receiver_is_active(
    make_layer: MakeLayer, topology: Topology, receive: Receive
) -> None:
    layer = make_layer(capacity=3)
    await _send_numbered(layer, "receiving.full", 3)
    with pytest.raises(ChannelFull):
        await layer.send("receiving.full", {"type": "one too many"})
    assert await receive(layer, "receiving.full") == {"type": "n", "n": 0}
    await layer.send("receiving.full", {"type": "n", "n": 3})  # the room that receive made
    with pytest.raises(ChannelFull):
        await layer.send("receiving.full", {"type": "full again"})
    assert [(await receive(layer, "receiving.full"))["n"] for _ in range(3)] == [1, 2, 3]


@ONE_QUEUE
async def test_a_receive_takes_one_message_off_the_server(
    make_layer: MakeLayer, topology: Topology, receive: Receive
) -> None:
    layer = make_layer()
    key = topology.queue_key(layer.prefix, "receiving.one")
    await _send_numbered(layer, "receiving.one", 10)
    assert await receive(layer, "receiving.one") == {"type": "n", "n": 0}
    assert topology.count(key) == 9
    assert await receive(layer, "receiving.one") == {"type": "n", "n": 1}
    assert topology.count(key) == 8


async def test_surplus_of_a_sharded_receive_goes_back_at_once(
    make_layer: MakeLayer, topology: Topology, receive: Receive, eventually: Eventually
) -> None:
    """Every topology: on three shards one receive reads all three queues and may bring one message from each;
    the two it was not handed go back to the head of their queues, so the channel still holds all but one."""
    layer = make_layer()
    key = topology.queue_key(layer.prefix, "receiving.spread")
    await _send_numbered(layer, "receiving.spread", 12)
    first = await receive(layer, "receiving.spread")
    await eventually(lambda: topology.count(key) == 11, "the surplus to be back on the server")
    rest = [(await receive(layer, "receiving.spread"))["n"] for _ in range(11)]
    assert sorted([first["n"], *rest]) == list(range(12))
    assert topology.count(key) == 0


@ONE_QUEUE
async def test_a_second_process_takes_what_the_first_did_not_ask_for(
    make_layer: MakeLayer, topology: Topology, receive: Receive
) -> None:
    first, second = make_layer(), make_layer()
    await _send_numbered(first, "receiving.shared", 5)
    assert await receive(first, "receiving.shared") == {"type": "n", "n": 0}
    # The first process holds nothing back: the second gets the rest at once, in order.
    assert [(await receive(second, "receiving.shared", timeout=2))["n"] for _ in range(4)] == [1, 2, 3, 4]


@pytest.mark.parametrize("topology", ["single"], indirect=True)
@pytest.mark.parametrize("channel", ["not-client-prefix!local_part", "specific.{other}!x"])
async def test_receive_on_a_process_channel_of_another_instance_is_refused(
    make_layer: MakeLayer, channel: str
) -> None:
    owner = make_layer()
    channel = channel.format(other=owner.client_prefix)
    # Nothing listens on port 1: a layer that asked the server anything would fail with a connection error.
    layer = ValkeyChannelLayer(hosts=["valkey://127.0.0.1:1"])
    with pytest.raises(ForeignChannelError, match=rf"{channel}.*not made by this layer instance") as raised:
        await layer.receive(channel)
    assert isinstance(raised.value, AssertionError)  # what channels-valkey 0.3 raised
    assert isinstance(raised.value, ValueError)
    assert raised.value.channel == channel


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_no_random_prefix_round_trip(
    make_layer: MakeLayer, topology: Topology, receive: Receive
) -> None:
    layer = make_layer(random_prefix_length=0)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "bare"})
    stored = topology.members(topology.queue_key(layer.prefix, channel))
    assert stored == [layer.serialize({"type": "bare", "__asgi_channel__": channel})]
    assert await receive(layer, channel) == {"type": "bare"}
    await layer.send("receiving.bare", {"type": "bare", "n": 1})
    assert await receive(layer, "receiving.bare") == {"type": "bare", "n": 1}


async def test_receives_cancelled_on_a_normal_channel_leave_its_messages_on_the_server(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive, eventually: Eventually
) -> None:
    """A receive that gives up (a websocket closing) takes nothing with it: what its reader was handed on the way
    goes back, and the queue holds every message sent."""
    server = server_factory()  # its own, so that the server's count of waiting receives is this test's only
    layer = ValkeyChannelLayer(hosts=[server.url()], prefix=key_prefix)
    key = layer.queue_key("receiving.cancelled")

    def blocked() -> int:
        return server.receives_waiting()

    def queued() -> int:
        with server.client() as client:
            return int(client.zcard(key))

    try:
        received: list[int] = []
        for n in range(20):
            waiting = asyncio.create_task(layer.receive("receiving.cancelled"))
            # A message given back by the last round is taken at once; otherwise the receive blocks.
            await eventually(
                lambda task=waiting: task.done() or blocked() >= 1, "the receive to wait on the server"
            )
            await layer.send("receiving.cancelled", {"type": "n", "n": n})
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                received.append((await waiting)["n"])
        left = 20 - len(received)
        await eventually(lambda: queued() == left, f"the {left} messages nobody took to be on the server")
        rest = [(await receive(layer, "receiving.cancelled"))["n"] for _ in range(left)]
        assert received + rest == list(range(20))
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("topology", ["single"], indirect=True)
async def test_a_process_channels_buffer_holds_its_capacity(
    make_layer: MakeLayer, topology: Topology, receive: Receive, eventually: Eventually
) -> None:
    """While another channel of the process is received, a channel nobody reads fills its buffer up to its
    capacity; beyond that its oldest messages make room, counted, as 0.3's receive buffer did."""
    layer = make_layer(capacity=3)
    idle, busy = await layer.new_channel(), await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(busy))  # drains the process queue into the buffers
    try:
        queue = topology.queue_key(layer.prefix, idle)
        for n in range(6):
            await layer.send(idle, {"type": "n", "n": n})
            await eventually(
                lambda: topology.count(queue) == 0, "the reader to take the message off the server"
            )
        await eventually(lambda: layer.counters.buffer_overflow == 3, "the 3 oldest messages to make room")
        assert [(await receive(layer, idle))["n"] for _ in range(3)] == [3, 4, 5]
    finally:
        waiting.cancel()
