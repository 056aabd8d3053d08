"""What a layer holds on one shard right now: its channels (queue length, age of the oldest message) and groups.

Keys are found with ``SCAN MATCH {prefix}*`` (the prefix glob-escaped), never ``KEYS``, and at most ``limit`` of them
are looked at per shard; a scan cut short by that bound says so. Group sizes of the core layer come from the
layer's own ``group_channels``, so "a member" means here what it means to ``group_send``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub.names import group_channel, worker_queue
from channels_valkey.sentinel import glob_escape

#: Keys asked for per ``SCAN`` call (a hint to the server, which stays responsive whatever the keyspace size).
SCAN_COUNT = 1000
#: Keys read per pipelined round trip, and channels per ``PUBSUB NUMSUB``.
BATCH = 500
#: Where the core layer keeps a group, after the prefix (``{prefix}:group:{group}``).
CORE_GROUP_MARK = ":group:"


@dataclass
class ChannelRow:
    """A channel as the layer keeps it: its queue (core, Pub/Sub worker channels) and its subscribers (Pub/Sub)."""

    shard: int
    name: str
    kind: str
    messages: int | None = None
    oldest_seconds: float | None = None
    subscribers: int | None = None


@dataclass
class GroupRow:
    """A group: live members (core) or subscribed connections (Pub/Sub)."""

    shard: int
    name: str
    size: int | None
    note: str | None = None


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


async def core_inventory(
    shard: ShardInventory, client: avalkey.Valkey, layer: ValkeyChannelLayer, limit: int
) -> None:
    """Fill ``shard`` with the core layer's queues and groups found there."""
    prefix = layer.prefix
    keys, shard.complete = await scan_keys(client, prefix, limit)
    shard.keys_examined = len(keys)
    queues: list[bytes] = []
    for key in keys:
        rest = _name(key[len(prefix.encode()) :])
        if rest.startswith(CORE_GROUP_MARK):
            shard.groups.append(await _core_group(shard.index, rest[len(CORE_GROUP_MARK) :], layer))
        else:
            queues.append(key)
    for key, (messages, oldest) in zip(queues, await queue_stats(client, queues, "ZCOUNT"), strict=True):
        rest = _name(key[len(prefix.encode()) :])
        if messages is None:
            kind = "not a queue"
        elif rest.endswith("$inflight"):
            kind = "in-flight backup"
        elif rest.endswith("!"):
            kind = "process"
        else:
            kind = "normal"
        shard.channels.append(ChannelRow(shard.index, rest, kind, messages, oldest))


async def _core_group(index: int, name: str, layer: ValkeyChannelLayer) -> GroupRow:
    placed = layer.consistent_hash(name)
    if placed != index:
        return GroupRow(index, name, None, f"the ring places this group on shard {placed}")
    try:
        members = await layer.group_channels(name)
    except TypeError as error:  # a name this layer would refuse (left by another program)
        return GroupRow(index, name, None, str(error))
    except valkey_errors.ValkeyError as error:
        return GroupRow(index, name, None, f"group_channels failed: {error}")
    return GroupRow(index, name, len(members))


async def pubsub_inventory(shard: ShardInventory, client: avalkey.Valkey, prefix: str, limit: int) -> None:
    """Fill ``shard`` with the Pub/Sub layer's subscribed channels and groups and its worker queues."""
    subscribed = [
        _name(raw) for raw in await client.execute_command("PUBSUB", "CHANNELS", glob_escape(prefix) + "*")
    ]
    if len(subscribed) > limit:
        subscribed, shard.complete = sorted(subscribed)[:limit], False
    queue_prefix = worker_queue(prefix, "")
    queues, queues_complete = await scan_keys(client, queue_prefix, limit)
    shard.complete = shard.complete and queues_complete
    shard.keys_examined = len(queues)
    group_prefix = group_channel(prefix, "")
    rows: dict[str, ChannelRow] = {}
    for name in subscribed:
        if name.startswith(group_prefix):
            continue
        rows[name] = ChannelRow(shard.index, name, "process" if "!" in name else "worker")
    for key, (messages, oldest) in zip(queues, await queue_stats(client, queues, "ZCARD"), strict=True):
        name = _name(key[len(queue_prefix.encode()) :])
        row = rows.setdefault(name, ChannelRow(shard.index, name, "worker"))
        row.messages, row.oldest_seconds = messages, oldest
    # Worker channels named outside the prefix have subscribers too (receivers listen for 0.3 senders).
    listed = set(subscribed)
    counts = await _subscriber_counts(client, [*subscribed, *(name for name in rows if name not in listed)])
    for name, row in rows.items():
        row.subscribers = counts.get(name, 0)
    shard.channels.extend(rows.values())
    for name in subscribed:
        if name.startswith(group_prefix):
            shard.groups.append(GroupRow(shard.index, name[len(group_prefix) :], counts.get(name, 0)))


async def _subscriber_counts(client: avalkey.Valkey, names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(names), BATCH):
        reply = await client.execute_command("PUBSUB", "NUMSUB", *names[start : start + BATCH])
        pairs = (
            list(reply.items())
            if isinstance(reply, dict)
            else list(zip(reply[::2], reply[1::2], strict=True))
        )
        for name, count in pairs:
            counts[_name(name) if isinstance(name, bytes) else str(name)] = int(count)
    return counts
