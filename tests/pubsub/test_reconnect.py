"""Losing the server: every local channel is told (``on_disconnect``), subscriptions (channels and groups) come back
within a second of the server being reachable again, and then every channel is told (``on_reconnect``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer, subscriber
from channels_valkey.sentinel import ReplyLost, ResiliencePolicy

from conftest import ON_EACH_LOOP, run_on_new_loop
from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]
Eventually = Callable[..., Awaitable[None]]

#: How soon after the server is reachable again every subscription must be back.
RESTORE_WITHIN = 1.0


def _layer(url: str, prefix: str, **config: Any) -> ValkeyPubSubChannelLayer:
    return ValkeyPubSubChannelLayer(
        hosts=[url], prefix=prefix, on_disconnect="layer.down", on_reconnect="layer.up", **config
    )


async def _consumers(layer: ValkeyPubSubChannelLayer) -> tuple[str, str]:
    """A channel on its own and one in a group: both must be told and both subscriptions restored."""
    alone, grouped = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", grouped)
    return alone, grouped


async def _works_again(layer: ValkeyPubSubChannelLayer, alone: str, grouped: str, receive: Receive) -> None:
    await layer.send(alone, {"type": "direct"})
    await layer.group_send("room", {"type": "grouped"})
    assert await receive(layer, alone) == {"type": "direct"}
    assert await receive(layer, grouped) == {"type": "grouped"}


async def test_kill_9_and_restart_on_the_same_port(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    server = server_factory()
    layer = _layer(server.url(), key_prefix)
    try:
        alone, grouped = await _consumers(layer)
        server.kill()
        assert await receive(layer, alone) == {"type": "layer.down"}
        assert await receive(layer, grouped) == {"type": "layer.down"}
        await asyncio.to_thread(server.start)
        reachable = time.monotonic()
        assert await receive(layer, alone) == {"type": "layer.up"}
        assert await receive(layer, grouped) == {"type": "layer.up"}
        restored = time.monotonic() - reachable
        assert restored < RESTORE_WITHIN, f"subscriptions came back {restored:.2f}s after the server"
        with server.client() as client:
            assert dict(client.pubsub_numsub(alone, grouped, f"{key_prefix}__group__room")) == {
                alone.encode(): 1,
                grouped.encode(): 1,
                f"{key_prefix}__group__room".encode(): 1,
            }
        await _works_again(layer, alone, grouped, receive)
    finally:
        await layer.close_pools()


async def test_connection_cut_while_new_connections_are_refused(
    fault_proxy: FaultProxy, key_prefix: str, receive: Receive
) -> None:
    layer = _layer(fault_proxy.url(), key_prefix)
    try:
        alone, grouped = await _consumers(layer)
        fault_proxy.refuse()
        fault_proxy.cut()
        assert await receive(layer, alone) == {"type": "layer.down"}
        assert await receive(layer, grouped) == {"type": "layer.down"}
        # Refused for a while: the reconnection attempts must back off, not give up.
        state = layer.loop_state()
        assert state is not None
        await asyncio.sleep(1.5)  # the outage itself: its length is what is being tested
        assert not state.subscribers[0].live
        fault_proxy.accept()
        reachable = time.monotonic()
        assert await receive(layer, alone) == {"type": "layer.up"}
        assert await receive(layer, grouped) == {"type": "layer.up"}
        restored = time.monotonic() - reachable
        assert restored < RESTORE_WITHIN, f"subscriptions came back {restored:.2f}s after the server"
        await _works_again(layer, alone, grouped, receive)
    finally:
        await layer.close_pools()


async def test_repeated_cuts_give_one_notice_each_way_per_outage(
    fault_proxy: FaultProxy, key_prefix: str, receive: Receive
) -> None:
    layer = _layer(fault_proxy.url(), key_prefix)
    try:
        alone, grouped = await _consumers(layer)
        for _ in range(3):
            fault_proxy.cut()
            assert await receive(layer, alone) == {"type": "layer.down"}
            assert await receive(layer, alone) == {"type": "layer.up"}
            assert await receive(layer, grouped) == {"type": "layer.down"}
            assert await receive(layer, grouped) == {"type": "layer.up"}
        await _works_again(layer, alone, grouped, receive)
    finally:
        await layer.close_pools()


async def test_without_notices_configured_subscriptions_still_come_back(
    fault_proxy: FaultProxy, key_prefix: str, receive: Receive, eventually: Eventually
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix)
    try:
        alone, grouped = await _consumers(layer)
        waiting = asyncio.create_task(receive(layer, alone))
        state = layer.loop_state()
        assert state is not None
        subscriber = state.subscribers[0]
        fault_proxy.cut()

        def resubscribed() -> bool:
            return (
                subscriber.connections_made == 2
                and subscriber.live
                and subscriber.confirmed == subscriber.wanted
            )

        await eventually(resubscribed, "the subscriptions to come back")
        await layer.send(alone, {"type": "first.after"})
        assert await waiting == {"type": "first.after"}  # no notice came before it
        await _works_again(layer, alone, grouped, receive)
    finally:
        await layer.close_pools()


async def test_a_server_gone_silent_is_noticed_by_the_keep_alive(
    fault_proxy: FaultProxy, key_prefix: str, receive: Receive
) -> None:
    # Nothing closes the connection: the proxy stops passing bytes both ways, as a frozen server or a dead link
    # without a FIN would. The unanswered PING is what tells.
    policy = ResiliencePolicy(health_check_interval=0.2, socket_timeout=0.5, connect_timeout=0.5)
    layer = _layer(fault_proxy.url(), key_prefix, policy=policy)
    try:
        alone, grouped = await _consumers(layer)
        fault_proxy.pause()
        silent = time.monotonic()
        assert await receive(layer, alone) == {"type": "layer.down"}
        noticed = time.monotonic() - silent
        bound = policy.health_check_interval + policy.socket_timeout + 2 * subscriber.KEEPALIVE_TICK
        assert noticed < bound, f"the silent server was noticed after {noticed:.2f}s"
        assert await receive(layer, grouped) == {"type": "layer.down"}
        fault_proxy.resume()
        assert await receive(layer, alone) == {"type": "layer.up"}
        assert await receive(layer, grouped) == {"type": "layer.up"}
        await _works_again(layer, alone, grouped, receive)
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("kind", ["worker", "process"])
async def test_a_send_whose_reply_was_lost_raises_instead_of_sending_a_second_copy(
    valkey_server: ValkeyProcess, fault_proxy: FaultProxy, key_prefix: str, receive: Receive, kind: str
) -> None:
    """The message reached its receiver, then the sender's connection failed before the reply came back: sending it
    again would deliver it twice (on a worker channel the receiver already popped it, so the queueing script cannot
    tell), so the sender gets ReplyLost instead."""
    sender = ValkeyPubSubChannelLayer(hosts=[fault_proxy.url()], prefix=key_prefix)
    receiver = ValkeyPubSubChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    try:
        channel = "work" if kind == "worker" else await receiver.new_channel()
        await sender.send(channel, {"type": "warm up"})
        assert await receive(receiver, channel) == {"type": "warm up"}
        fault_proxy.set_latency(0.5)
        sending = asyncio.create_task(sender.send(channel, {"type": "once"}))
        # The server has run the send: the receiver got it while the reply is still held in the proxy.
        assert await receive(receiver, channel) == {"type": "once"}
        assert not sending.done()
        fault_proxy.cut()
        fault_proxy.set_latency(0)
        with pytest.raises(
            ReplyLost, match=r"send to .+: the connection failed after the message was written"
        ):
            await asyncio.wait_for(sending, 10)
        await sender.send(channel, {"type": "next"})
        assert await receive(receiver, channel) == {"type": "next"}
    finally:
        await sender.flush()
        await sender.close_pools()
        await receiver.close_pools()


async def test_on_several_shards_only_the_channels_reached_through_the_lost_shard_are_told(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    """Decision: a channel is told when a shard carrying one of its subscriptions (its own name or one of its
    groups) drops; a channel with nothing on that shard missed nothing, so it gets no notice."""
    kept, lost = server_factory(), server_factory()
    layer = ValkeyPubSubChannelLayer(
        hosts=[kept.url(), lost.url()], prefix=key_prefix, on_disconnect="layer.down", on_reconnect="layer.up"
    )
    try:
        names: dict[int, list[str]] = {0: [], 1: []}
        while len(names[0]) < 2 or not names[1]:
            channel = await layer.new_channel()
            names[layer.consistent_hash(channel)].append(channel)
        untouched, via_group, own = names[0][0], names[0][1], names[1][0]
        group = next(
            g
            for g in (f"room{n}" for n in range(100))
            if layer.consistent_hash(f"{key_prefix}__group__{g}") == 1
        )
        await layer.group_add(group, via_group)
        lost.kill()
        assert await receive(layer, own) == {"type": "layer.down"}
        assert await receive(layer, via_group) == {"type": "layer.down"}
        await asyncio.to_thread(lost.start)
        assert await receive(layer, own) == {"type": "layer.up"}
        assert await receive(layer, via_group) == {"type": "layer.up"}
        await layer.send(untouched, {"type": "no notice came before me"})
        assert await receive(layer, untouched) == {"type": "no notice came before me"}
        await layer.group_send(group, {"type": "grouped"})
        assert await receive(layer, via_group) == {"type": "grouped"}
    finally:
        await layer.close_pools()


@ON_EACH_LOOP
def test_a_group_joined_as_the_connection_closes_is_restored_with_the_others(
    valkey_server: ValkeyProcess, key_prefix: str, loop_kind: str
) -> None:
    """The ``SUBSCRIBE`` of a ``group_add`` meets a transport the loop has just closed, before the subscriber's
    listener has heard of it: asyncio's loop drops the write, uvloop's raises ``RuntimeError`` from it. Either way
    the call returns, and the restored connection subscribes the group with the others."""

    async def join_as_it_closes() -> None:
        layer = _layer(valkey_server.url(), key_prefix)
        try:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            state = layer.loop_state()
            assert state is not None
            link = state.subscribers[0]._link
            link.connection._writer.transport.abort()
            await asyncio.sleep(0)  # the loop closes the transport; the listener has not run yet
            assert link.connection.is_connected  # so the write goes ahead, onto the closed transport
            await layer.group_add("later", channel)
            for notice in ("layer.down", "layer.up"):
                assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": notice}
            await layer.group_send("later", {"type": "later"})
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "later"}
        finally:
            await layer.close_pools()

    run_on_new_loop(loop_kind, join_as_it_closes())
