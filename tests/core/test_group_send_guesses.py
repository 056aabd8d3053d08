"""``group_send`` with the members it read last: one script call while the group stays as it was, and exactly the
group's members as they are now whenever it changed elsewhere (another instance, another process, expiry).

The guesses live in the layer instance that sends (``channels_valkey.core.groups``); the membership changes here
are made by a second instance or written on the server, which the sender cannot know of.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from random import Random
from typing import TYPE_CHECKING, Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.core.groups import MemberGuesses
from channels_valkey.core.scripts import MAX_KEYS_PER_CALL

if TYPE_CHECKING:
    from core.conftest import Topology

    from servers.process import ValkeyProcess

Receive = Callable[..., Awaitable[dict[str, Any]]]


def _members_of(topology: Topology, prefix: str, channels: list[str]) -> dict[str, list[bytes]]:
    return {channel: topology.members(topology.queue_key(prefix, channel)) for channel in channels}


async def test_a_member_another_instance_adds_gets_the_next_message(
    make_layer: Callable[..., ValkeyChannelLayer], receive: Receive
) -> None:
    sender, other = make_layer(), make_layer()
    process = await other.new_channel()
    await sender.group_add("guess-room", "guess.first")
    await sender.group_send("guess-room", {"type": "m", "n": 1})  # the sender now guesses one member
    await other.group_add("guess-room", "guess.second")
    await other.group_add("guess-room", process)
    await sender.group_send("guess-room", {"type": "m", "n": 2})
    assert [(await receive(other, "guess.first"))["n"] for _ in range(2)] == [1, 2]
    assert (await receive(other, "guess.second"))["n"] == 2
    assert (await receive(other, process))["n"] == 2
    await sender.group_send("guess-room", {"type": "m", "n": 3})  # and now all three
    for channel in ("guess.first", "guess.second", process):
        assert (await receive(other, channel))["n"] == 3


async def test_a_member_another_instance_discards_gets_nothing_more(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str, receive: Receive
) -> None:
    sender, other = make_layer(), make_layer()
    process = await other.new_channel()
    for channel in ("guess.stays", "guess.leaves", process):
        await sender.group_add("guess-room", channel)
    await sender.group_send("guess-room", {"type": "m", "n": 1})
    await other.group_discard("guess-room", "guess.leaves")
    await other.group_discard("guess-room", process)
    await sender.group_send("guess-room", {"type": "m", "n": 2})
    assert [(await receive(other, "guess.stays"))["n"] for _ in range(2)] == [1, 2]
    # What the two who left hold on the server: the first message only.
    queued = _members_of(topology, layer_prefix, ["guess.leaves", process])
    assert [len(members) for members in queued.values()] == [1, 1]
    assert (await receive(other, process))["n"] == 1


async def test_a_member_swapped_for_another_is_told_apart(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str, receive: Receive
) -> None:
    sender, other = make_layer(), make_layer()
    await sender.group_add("guess-swap", "guess.stays")
    await sender.group_add("guess-swap", "guess.leaves")
    await sender.group_send("guess-swap", {"type": "m", "n": 1})
    # As many members as guessed, one of them another.
    await other.group_discard("guess-swap", "guess.leaves")
    await other.group_add("guess-swap", "guess.joins")
    await sender.group_send("guess-swap", {"type": "m", "n": 2})
    assert (await receive(other, "guess.joins"))["n"] == 2
    assert len(topology.members(topology.queue_key(layer_prefix, "guess.leaves"))) == 1


async def test_a_member_that_expired_gets_nothing_more(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str
) -> None:
    sender = make_layer(group_expiry=60)
    await sender.group_add("guess-aging", "guess.fresh")
    await sender.group_add("guess-aging", "guess.aging")
    await sender.group_send("guess-aging", {"type": "m", "n": 1})
    key = topology.group_key(layer_prefix, "guess-aging")
    server = topology.server_of(sender.consistent_hash("guess-aging"), key)
    with server.client() as client:
        # As if guess.aging had joined 61 seconds ago and never renewed.
        client.zadd(key, {"guess.aging": time.time() - 61}, xx=True)
    await sender.group_send("guess-aging", {"type": "m", "n": 2})
    queued = _members_of(topology, layer_prefix, ["guess.fresh", "guess.aging"])
    assert [len(members) for members in queued.values()] == [2, 1]


async def test_a_group_emptied_elsewhere_takes_nothing(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str
) -> None:
    sender, other = make_layer(), make_layer()
    await sender.group_add("guess-empty", "guess.only")
    await sender.group_send("guess-empty", {"type": "m", "n": 1})
    await other.group_discard("guess-empty", "guess.only")
    await sender.group_send("guess-empty", {"type": "m", "n": 2})
    await sender.group_send("guess-empty", {"type": "m", "n": 3})  # guessing no member now
    assert len(topology.members(topology.queue_key(layer_prefix, "guess.only"))) == 1
    await other.group_add("guess-empty", "guess.only")
    await sender.group_send("guess-empty", {"type": "m", "n": 4})
    assert len(topology.members(topology.queue_key(layer_prefix, "guess.only"))) == 2


async def test_a_full_queue_of_a_guessed_group_is_counted_and_logged(
    make_layer: Callable[..., ValkeyChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    sender = make_layer(capacity=1)
    await sender.group_add("guess-full", "guess.small")
    await sender.group_send("guess-full", {"type": "m", "n": 1})
    caplog.set_level(logging.INFO, logger="channels_valkey.core")
    await sender.group_send("guess-full", {"type": "m", "n": 2})
    assert sender.counters.group_over_capacity == 1
    assert "1 of 1 channels over capacity in group guess-full" in caplog.messages


#: What the layer's scripts call (INFO commandstats counts the commands a script runs as well as the script).
SCRIPT_COMMANDS = {"zadd", "zcount", "zrange", "zremrangebyscore", "expire"}


def _commands(server: ValkeyProcess) -> dict[str, int]:
    """Calls per command the server has run (INFO commandstats), those of the connection asking left out."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in server.info("commandstats").items()
        if name != "cmdstat_info"
        and not name.startswith("cmdstat_client")  # CLIENT SETINFO ("client" on 6.2)
    }


async def test_while_a_group_stays_as_it_was_each_group_send_is_one_script_call(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, receive: Receive
) -> None:
    server = server_factory()
    layer = ValkeyChannelLayer(hosts=[server.url()], prefix=key_prefix)
    try:
        process = await layer.new_channel()
        for channel in ("guess.normal", process, process + "x"):
            await layer.group_add("guess-calls", channel)
        await layer.group_send("guess-calls", {"type": "m", "n": 0})
        before = _commands(server)
        for n in range(1, 11):
            await layer.group_send("guess-calls", {"type": "m", "n": n})
        after = _commands(server)
        ran = {
            name: calls - before.get(name, 0) for name, calls in after.items() if calls != before.get(name)
        }
        assert ran.pop("evalsha") == 10
        assert set(ran) <= SCRIPT_COMMANDS
        assert ran["zrange"] == 10  # the members, read once per call
        for channel in ("guess.normal", process, process + "x"):
            assert [(await receive(layer, channel))["n"] for _ in range(11)] == list(range(11))
    finally:
        await layer.flush()
        await layer.close_pools()


def test_the_guesses_keep_the_most_recently_used_groups_and_only_small_ones() -> None:
    guesses = MemberGuesses()
    for index in range(MemberGuesses.GROUPS):
        guesses.remember(f"g{index}", [f"c{index}"])
    assert guesses.get("g0") == ("c0",)  # now the most recently used
    guesses.remember("newest", ["c"])
    assert guesses.get("g1") is None
    assert guesses.get("g0") == ("c0",)
    guesses.remember("g0", [f"c{index}" for index in range(MAX_KEYS_PER_CALL + 1)])
    assert guesses.get("g0") is None  # too large for one script call: forgotten
    guesses.forget("newest")
    assert guesses.get("newest") is None
    guesses.forget()
    assert guesses.get("g2") is None


async def test_group_sends_during_membership_churn_reach_the_members_of_their_moment(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology, layer_prefix: str
) -> None:
    """Another instance adds and removes members while the sender sends: a channel that was a member for the whole
    of a send gets its message, and one that was not a member for the whole of it does not."""
    sender, churner = make_layer(capacity=1000), make_layer(capacity=1000)
    channels = [f"guess.churn{index}" for index in range(6)]
    random = Random(17)
    #: Per channel: (started, ended, member afterwards) of each add or discard, in order.
    changes: dict[str, list[tuple[float, float, bool]]] = {
        channel: [(0.0, 0.0, False)] for channel in channels
    }
    sends: list[tuple[float, float]] = []

    async def churn() -> None:
        for _ in range(150):
            channel = random.choice(channels)
            joins = not changes[channel][-1][2]
            started = time.monotonic()
            if joins:
                await churner.group_add("guess-churn", channel)
            else:
                await churner.group_discard("guess-churn", channel)
            changes[channel].append((started, time.monotonic(), joins))

    async def send() -> None:
        for n in range(300):
            started = time.monotonic()
            await sender.group_send("guess-churn", {"type": "m", "n": n})
            sends.append((started, time.monotonic()))

    await asyncio.gather(churn(), send())
    checked = 0
    for channel in channels:
        got = {
            message["n"]
            for member in topology.members(topology.queue_key(layer_prefix, channel))
            if (message := sender.decode(member)) is not None
        }
        for n, (started, ended) in enumerate(sends):
            # The member state that held from before the send started until after it ended, if one did.
            before = [change for change in changes[channel] if change[1] <= started]
            during = [change for change in changes[channel] if change[1] > started and change[0] < ended]
            if during:
                continue
            member = before[-1][2]
            assert (n in got) == member, f"send {n} to {channel}: member {member}, received {n in got}"
            checked += 1
    assert checked > len(sends)  # most sends met a settled membership
