"""Channels and groups of the shard-down fault test, each placed on a chosen shard by the layer's own routing
(imported as ``faults.shard_layout``).

Where a name lives differs between the layers. Core: a process channel lives on the shard of its ``name!`` part, a
group's member set on the shard of the group's name, and a normal channel on no shard in particular (sends take the
shards in turn, receives read them all). Pub/Sub: a channel, worker or process, lives on the shard of its own name,
and a group on the shard of its Pub/Sub name (``layer.group_channel_name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import non_local_name

#: Names tried before a placement is given up: with three shards, each takes about a third of them.
TRIES = 1_000


@dataclass
class Layout:
    """The test's traffic: round trips on the live shards, and what is addressed to the victim."""

    #: Channels of the measured round trips (send, then receive), none on the victim.
    live_channels: list[str]
    #: A group on a live shard whose members are on live shards: a measured ``group_send``, then a receive at each.
    group: str
    members: list[str]
    #: A queue channel of the victim (core: a process channel; Pub/Sub: a worker channel).
    victim_channel: str
    #: A ``group_send`` that touches the victim (core: a group on a live shard with a member on the victim; Pub/Sub:
    #: a group on the victim), and its member on a live shard.
    victim_group: str
    witness: str
    #: Whether the victim's group spans shards, so that its live member still gets what is sent while the victim
    #: is down (core); a Pub/Sub group travels on one shard.
    victim_group_spans: bool


def _pubsub(layer: Any) -> bool:
    return isinstance(layer, ValkeyPubSubChannelLayer)


def channel_shard(layer: Any, channel: str) -> int:
    """The shard of a channel's queue or subscription (for a core process channel: of its ``name!`` part)."""
    return int(layer.consistent_hash(channel if _pubsub(layer) else non_local_name(channel)))


def group_shard(layer: Any, group: str) -> int:
    """The shard holding a group (core: its member set; Pub/Sub: its Pub/Sub name)."""
    return int(layer.consistent_hash(layer.group_channel_name(group) if _pubsub(layer) else group))


def named_on(layer: Any, shard: int, stem: str, of_group: bool = False) -> str:
    """A name ``{stem}{n}`` whose channel (or, ``of_group``, group) lives on ``shard``."""
    place = group_shard if of_group else channel_shard
    for n in range(TRIES):
        if place(layer, f"{stem}{n}") == shard:
            return f"{stem}{n}"
    raise RuntimeError(f"no name {stem}N on shard {shard} in {TRIES} tries")


async def process_channel_on(layer: Any, shard: int) -> str:
    """A process channel of ``layer`` (made by ``new_channel``, subscribed on Pub/Sub) living on ``shard``."""
    for n in range(TRIES):
        # Core places a process channel by its prefix (the "name!" part); Pub/Sub by its whole random name.
        channel: str = await layer.new_channel() if _pubsub(layer) else await layer.new_channel(f"p{n}")
        if channel_shard(layer, channel) == shard:
            return channel  # the others are never received from: Pub/Sub drops their subscriptions when idle
    raise RuntimeError(f"no process channel on shard {shard} in {TRIES} tries")


async def place(layer: Any, live: list[int], victim: int) -> Layout:
    """Name the test's channels and groups, and make its groups (while every shard is up)."""
    first, second = live
    members = [await process_channel_on(layer, shard) for shard in live]
    witness = await process_channel_on(layer, first)
    group = named_on(layer, second, "room", of_group=True)
    if _pubsub(layer):
        workers = [named_on(layer, shard, "work") for shard in live]
        live_channels = [*workers, *members]
        victim_channel = named_on(layer, victim, "work")
        victim_group = named_on(layer, victim, "hall", of_group=True)
        victim_members = [witness]
    else:
        live_channels = ["steady", *members]
        victim_channel = await process_channel_on(layer, victim)
        victim_group = named_on(layer, first, "hall", of_group=True)
        victim_members = [victim_channel, witness]
    for member in members:
        await layer.group_add(group, member)
    for member in victim_members:
        await layer.group_add(victim_group, member)
    return Layout(
        live_channels=live_channels,
        group=group,
        members=members,
        victim_channel=victim_channel,
        victim_group=victim_group,
        witness=witness,
        victim_group_spans=not _pubsub(layer),
    )
