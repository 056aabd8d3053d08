"""What a layer holds on one shard right now: its channels (queue length, age of the oldest message) and groups.

Keys are found with ``SCAN MATCH {prefix}*`` (the prefix glob-escaped), never ``KEYS``, and at most ``limit`` of them
are looked at per shard (per primary of a cluster); a scan cut short by that bound says so. Group sizes of the core
layer come from the layer's own ``group_channels``, so "a member" means here what it means to ``group_send``.

Names are read back from keys through the layouts each layer documents (``queue_key_layout``, ``group_key_layout``,
and the Pub/Sub layer's ``group_channel_layout``), so on a cluster, where the name in a key is a hash tag
(``asgi{emails}``), the rows say ``emails``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.cli.shards import ShardSlot
from channels_valkey.cli.targets import Target
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import glob_escape

#: Keys asked for per ``SCAN`` call (a hint to the server, which stays responsive whatever the keyspace size).
SCAN_COUNT = 1000
#: Keys read per pipelined round trip, and channels per ``PUBSUB NUMSUB``.
BATCH = 500
#: Keys looked at per shard unless ``--max-keys`` says otherwise.
DEFAULT_MAX_KEYS = 10_000


def max_keys(text: str) -> int:
    """argparse type of ``--max-keys``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of keys of at least 1, got {text!r}")
    return value


def add_max_keys_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-keys N``, the bound on the keys a command looks at per shard."""
    parser.add_argument(
        "--max-keys",
        type=max_keys,
        default=DEFAULT_MAX_KEYS,
        metavar="N",
        help=f"look at no more than N keys per shard or cluster primary (default: {DEFAULT_MAX_KEYS})",
    )


class KeyLayout(NamedTuple):
    """How a layer builds one kind of key around a name (a layer's ``queue_key_layout`` and the like): what comes
    before the name, and what after it."""

    head: str
    tail: str

    def name(self, key: str) -> str | None:
        """The name ``key`` was made of, or None when it is not a key of this layout."""
        if len(key) <= len(self.head) + len(self.tail):
            return None
        if not (key.startswith(self.head) and key.endswith(self.tail)):
            return None
        return key[len(self.head) : len(key) - len(self.tail)]


@dataclass
class ChannelRow:
    """A channel as the layer keeps it: its queue (core, Pub/Sub worker channels) and its subscribers (Pub/Sub)."""

    shard: int
    name: str
    kind: str
    messages: int | None = None
    oldest_seconds: float | None = None
    subscribers: int | None = None

    def as_json(self, pubsub: bool) -> dict[str, Any]:
        """The row as the commands' JSON writes it; ``subscribers`` only for the Pub/Sub layer."""
        return {
            "shard": self.shard,
            "name": self.name,
            "kind": self.kind,
            "messages": self.messages,
            "oldest_seconds": None if self.oldest_seconds is None else round(self.oldest_seconds, 3),
            **({"subscribers": self.subscribers} if pubsub else {}),
        }


@dataclass
class GroupRow:
    """A group: live members (core) or subscribed connections (Pub/Sub)."""

    shard: int
    name: str
    size: int | None
    note: str | None = None

    def as_json(self, pubsub: bool) -> dict[str, Any]:
        """The row as the commands' JSON writes it: the size is ``subscribers`` (Pub/Sub) or ``members`` (core)."""
        return {"shard": self.shard, "name": self.name, size_name(pubsub): self.size}


def size_name(pubsub: bool) -> str:
    """What a group's size counts on a layer: the Pub/Sub layer's subscribed connections, the core layer's members."""
    return "subscribers" if pubsub else "members"


@dataclass
class ShardInventory:
    """What was found on one shard, and whether the scan saw everything."""

    index: int
    host: str
    keys_examined: int = 0
    complete: bool = True
    problem: str | None = None
    channels: list[ChannelRow] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)


async def take_inventory(slot: ShardSlot, target: Target, limit: int, *, command: str) -> ShardInventory:
    """What the target's layer holds on one shard; a failure is kept as its ``problem`` instead of being raised.

    ``command`` names the sub-command asking, for the message when the ACL refuses what it needs.
    """
    shard = ShardInventory(slot.index, slot.host)
    if slot.problem is not None:
        shard.problem = slot.problem
        return shard
    try:
        client = await slot.client()
        if isinstance(target.instance, ValkeyChannelLayer):
            await core_inventory(shard, client, target.instance, limit)
        else:
            await pubsub_inventory(shard, client, target.instance, limit)
    except valkey_errors.NoPermissionError as error:
        shard.problem = f"the ACL refuses a command {command} needs (SCAN, ZRANGE, PUBSUB ...): {error}"
    except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as error:
        shard.problem = f"unreachable: {type(error).__name__}: {error}"
    except valkey_errors.ValkeyError as error:
        shard.problem = f"inspecting failed: {type(error).__name__}: {error}"
    return shard


async def scan_keys(client: avalkey.Valkey, prefix: str, limit: int) -> tuple[list[bytes], bool]:
    """Keys starting with ``prefix`` (at most ``limit``) and whether that is all of them.

    The scan goes on past ``limit`` keys only to learn whether there is one more; each ``SCAN`` call does a
    bounded amount of work, so the server stays responsive whatever the size of its keyspace.
    """
    found: dict[bytes, None] = {}
    pattern = glob_escape(prefix) + "*"
    cursor = 0
    while True:
        cursor, batch = await client.scan(cursor=cursor, match=pattern, count=SCAN_COUNT)
        for key in batch:
            if key in found:
                continue  # SCAN may return a key twice
            if len(found) >= limit:
                return list(found), False
            found[key] = None
        if cursor == 0:
            return list(found), True


async def queue_stats(
    client: avalkey.Valkey, keys: Sequence[bytes], count_command: str
) -> list[tuple[int | None, float | None]]:
    """(messages, age of the oldest in seconds) per sorted-set key; (None, None) for keys of another type.

    The score of a queued message is its send time, so the age is now minus the lowest score. ``count_command`` is
    the one the layer's own user may run (``ZCOUNT`` for the core layer, ``ZCARD`` for the Pub/Sub one).
    """
    results: list[tuple[int | None, float | None]] = []
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        async with client.pipeline(transaction=False) as pipe:
            for key in batch:
                if count_command == "ZCOUNT":
                    pipe.execute_command("ZCOUNT", key, "-inf", "+inf")
                else:
                    pipe.execute_command("ZCARD", key)
                pipe.execute_command("ZRANGE", key, 0, 0, "WITHSCORES")
            replies = await pipe.execute(raise_on_error=False)
        now = time.time()
        for count, head in zip(replies[::2], replies[1::2], strict=True):
            for reply in (count, head):
                if isinstance(reply, valkey_errors.ResponseError) and not _wrong_type(reply):
                    raise reply
            if not isinstance(count, int):
                results.append((None, None))
                continue
            score = _first_score(head)
            results.append((count, None if score is None else max(0.0, now - score)))
    return results


def _wrong_type(error: valkey_errors.ResponseError) -> bool:
    return str(error).startswith("WRONGTYPE")


def _first_score(reply: object) -> float | None:
    """The score in a ``ZRANGE ... WITHSCORES`` reply of one member: ``[m, s]`` (RESP2) or ``[[m, s]]`` (RESP3)."""
    if not isinstance(reply, list) or not reply:
        return None
    pair = reply[0] if isinstance(reply[0], list) else reply
    try:
        return float(pair[1])
    except (IndexError, TypeError, ValueError):
        return None


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _name_in(layout: KeyLayout, key: str) -> str:
    """The name in ``key``; a key of the prefix that the layout does not explain is shown as it is after the head."""
    name = layout.name(key)
    return key[len(layout.head) :] if name is None else name


async def core_inventory(
    shard: ShardInventory, client: avalkey.Valkey, layer: ValkeyChannelLayer, limit: int
) -> None:
    """Fill ``shard`` with the core layer's queues and groups found there."""
    keys, shard.complete = await scan_keys(client, layer.prefix, limit)
    shard.keys_examined = len(keys)
    queue_layout, group_layout = KeyLayout(*layer.queue_key_layout), KeyLayout(*layer.group_key_layout)
    queues: list[bytes] = []
    for key in keys:
        # Groups first: outside a cluster a group key has the form of a queue key too.
        group = group_layout.name(_name(key))
        if group is not None:
            shard.groups.append(await _core_group(shard.index, group, layer))
        else:
            queues.append(key)
    for key, (messages, oldest) in zip(queues, await queue_stats(client, queues, "ZCOUNT"), strict=True):
        name = _name_in(queue_layout, _name(key))
        if messages is None:
            kind = "not a queue"
        elif name.endswith("$inflight"):
            kind = "in-flight backup"
        elif name.endswith("!"):
            kind = "process"
        else:
            kind = "normal"
        shard.channels.append(ChannelRow(shard.index, name, kind, messages, oldest))


async def _core_group(index: int, name: str, layer: ValkeyChannelLayer) -> GroupRow:
    # On a cluster the slot places a group, and the scan found it on the primary that serves it.
    placed = index if layer.cluster else (await layer.shard_ring()).index(name)
    if placed != index:
        return GroupRow(index, name, None, f"the ring places this group on shard {placed}")
    try:
        members = await layer.group_channels(name)
    except TypeError as error:  # a name this layer would refuse (left by another program)
        return GroupRow(index, name, None, str(error))
    except valkey_errors.ValkeyError as error:
        return GroupRow(index, name, None, f"group_channels failed: {error}")
    return GroupRow(index, name, len(members))


async def pubsub_inventory(
    shard: ShardInventory, client: avalkey.Valkey, layer: ValkeyPubSubChannelLayer, limit: int
) -> None:
    """Fill ``shard`` with the Pub/Sub layer's subscribed channels and groups and its worker queues.

    On a cluster the layer subscribes with sharded Pub/Sub, on the primary serving each name's slot, so that is
    where ``PUBSUB SHARDCHANNELS`` and ``SHARDNUMSUB`` find its names.
    """
    prefix = layer.prefix
    listing, counting = ("SHARDCHANNELS", "SHARDNUMSUB") if layer.cluster else ("CHANNELS", "NUMSUB")
    subscribed = [
        _name(raw) for raw in await client.execute_command("PUBSUB", listing, glob_escape(prefix) + "*")
    ]
    if len(subscribed) > limit:
        subscribed, shard.complete = sorted(subscribed)[:limit], False
    queue_layout = KeyLayout(*layer.queue_key_layout)
    queues, queues_complete = await scan_keys(client, queue_layout.head, limit)
    shard.complete = shard.complete and queues_complete
    shard.keys_examined = len(queues)
    group_layout = KeyLayout(*layer.group_channel_layout)
    rows: dict[str, ChannelRow] = {}
    for name in subscribed:
        if group_layout.name(name) is not None:
            continue
        rows[name] = ChannelRow(shard.index, name, "process" if "!" in name else "worker")
    for key, (messages, oldest) in zip(queues, await queue_stats(client, queues, "ZCARD"), strict=True):
        name = _name_in(queue_layout, _name(key))
        row = rows.setdefault(name, ChannelRow(shard.index, name, "worker"))
        row.messages, row.oldest_seconds = messages, oldest
    # Worker channels named outside the prefix have subscribers too (receivers listen for 0.3 senders).
    listed = set(subscribed)
    names = [*subscribed, *(name for name in rows if name not in listed)]
    counts = await _subscriber_counts(client, counting, names)
    for name, row in rows.items():
        row.subscribers = counts.get(name, 0)
    shard.channels.extend(rows.values())
    for name in subscribed:
        group = group_layout.name(name)
        if group is not None:
            shard.groups.append(GroupRow(shard.index, group, counts.get(name, 0)))


async def _subscriber_counts(client: avalkey.Valkey, counting: str, names: Sequence[str]) -> dict[str, int]:
    """Subscribers per name on this server, by ``PUBSUB NUMSUB`` (or ``SHARDNUMSUB``, which takes names of any
    slot and counts this node's subscribers)."""
    counts: dict[str, int] = {}
    for start in range(0, len(names), BATCH):
        reply = await client.execute_command("PUBSUB", counting, *names[start : start + BATCH])
        pairs = (
            list(reply.items())
            if isinstance(reply, dict)
            else list(zip(reply[::2], reply[1::2], strict=True))
        )
        for name, count in pairs:
            counts[_name(name) if isinstance(name, bytes) else str(name)] = int(count)
    return counts
