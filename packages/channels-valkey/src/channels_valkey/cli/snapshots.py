"""One refresh of ``channels-valkey top``: every shard's server figures and inventory at one moment, each queue's
growth since the previous refresh, the busiest channels and largest groups first, as text lines or one JSON object.

Growth is (messages now - messages at the previous refresh) / seconds between the two refreshes. A queue absent
from the previous refresh grew from nothing when that refresh saw its whole shard; otherwise (the first refresh, a
shard that was down, a scan cut short by ``--max-keys``) its growth is unknown. A queue that empties is deleted by
the server, so it leaves the list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from channels_valkey.cli.inventory import ChannelRow, GroupRow, ShardInventory, size_name, take_inventory
from channels_valkey.cli.output import render_table, seconds_text
from channels_valkey.cli.server_figures import ServerFigures, bytes_text, server_figures
from channels_valkey.cli.shards import ShardSlot
from channels_valkey.cli.targets import Target


@dataclass(frozen=True)
class ShardState:
    """One shard at one refresh: what its server said about its load, and what the layer keeps there."""

    figures: ServerFigures
    inventory: ShardInventory

    @property
    def error(self) -> str | None:
        """Why the shard could not be looked at in full; the inventory's reason first, as ``inspect`` gives it."""
        return self.inventory.problem or self.figures.problem

    @property
    def seen_whole(self) -> bool:
        """Whether every key of the prefix on this shard was looked at."""
        return self.inventory.problem is None and self.inventory.complete


@dataclass(frozen=True)
class ChannelState:
    """A channel row with its queue's growth per second since the previous refresh (None when unknown)."""

    row: ChannelRow
    growth: float | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh saw, the busiest channels and the largest groups first."""

    number: int
    #: Unix time of the refresh, and the monotonic clock's reading then (for the seconds between two refreshes).
    timestamp: float
    clock: float
    #: Seconds since the previous refresh, the growth's denominator; None for the first.
    elapsed: float | None
    shards: tuple[ShardState, ...]
    channels: tuple[ChannelState, ...]
    groups: tuple[GroupRow, ...]


async def take_snapshot(
    slots: Sequence[ShardSlot], target: Target, max_keys: int, previous: Snapshot | None
) -> Snapshot:
    """Ask every shard at once for its figures and inventory, and compare the queues with ``previous``."""
    shards = tuple(await asyncio.gather(*(_shard_state(slot, target, max_keys) for slot in slots)))
    clock, timestamp = time.monotonic(), time.time()
    elapsed = None if previous is None else clock - previous.clock
    before = (
        None
        if previous is None
        else {
            (state.row.shard, state.row.name, state.row.kind): state.row.messages
            for state in previous.channels
        }
    )
    channels = [
        ChannelState(row, _growth(row, before, previous, elapsed))
        for shard in shards
        for row in shard.inventory.channels
    ]
    channels.sort(key=_busiest_first)
    groups = sorted(
        (row for shard in shards for row in shard.inventory.groups),
        key=lambda row: (-(row.size or 0), row.name, row.shard),
    )
    return Snapshot(
        number=1 if previous is None else previous.number + 1,
        timestamp=timestamp,
        clock=clock,
        elapsed=elapsed,
        shards=shards,
        channels=tuple(channels),
        groups=tuple(groups),
    )


async def _shard_state(slot: ShardSlot, target: Target, max_keys: int) -> ShardState:
    figures = await server_figures(slot)
    if figures.unreachable:
        # Scanning would only wait out the same failure a second time.
        return ShardState(figures, ShardInventory(slot.index, slot.host, problem=figures.problem))
    return ShardState(figures, await take_inventory(slot, target, max_keys, command="top"))


def _growth(
    row: ChannelRow,
    before: dict[tuple[int, str, str], int | None] | None,
    previous: Snapshot | None,
    elapsed: float | None,
) -> float | None:
    if row.messages is None or before is None or previous is None or not elapsed:
        return None
    key = (row.shard, row.name, row.kind)
    if key in before:
        count = before[key]
        return None if count is None else (row.messages - count) / elapsed
    if row.shard < len(previous.shards) and previous.shards[row.shard].seen_whole:
        return row.messages / elapsed
    return None


def _busiest_first(state: ChannelState) -> tuple[Any, ...]:
    row = state.row
    return (-(row.messages or 0), -(row.oldest_seconds or 0.0), -(row.subscribers or 0), row.name, row.shard)


def snapshot_json(snapshot: Snapshot, target: Target, limit: int) -> dict[str, Any]:
    """The JSON object ``top --json`` prints for one refresh (its shape is documented in the package README)."""
    pubsub = target.layer == "pubsub"
    return {
        "timestamp": round(snapshot.timestamp, 3),
        "refresh": snapshot.number,
        "elapsed_seconds": None if snapshot.elapsed is None else round(snapshot.elapsed, 3),
        "layer": target.layer,
        "prefix": target.prefix,
        "source": target.source,
        "shards": [
            {
                "index": shard.inventory.index,
                "host": shard.inventory.host,
                "error": shard.error,
                **shard.figures.as_json(),
                "keys_examined": shard.inventory.keys_examined,
                "complete": shard.seen_whole,
            }
            for shard in snapshot.shards
        ],
        "channels_total": len(snapshot.channels),
        "channels": [
            {
                **state.row.as_json(pubsub),
                "growth_per_second": None if state.growth is None else round(state.growth, 3),
            }
            for state in snapshot.channels[:limit]
        ],
        "groups_total": len(snapshot.groups),
        "groups": [row.as_json(pubsub) for row in snapshot.groups[:limit]],
    }


def snapshot_lines(snapshot: Snapshot, target: Target, limit: int, max_keys: int, heading: str) -> list[str]:
    """The refresh as text: ``heading``, the shards with their figures, the busiest channels, the largest groups."""
    pubsub = target.layer == "pubsub"
    lines = [heading, ""]
    lines += render_table(
        ("shard", "host", "memory", "clients", "ops/s", "keys", "status"),
        [
            (
                shard.inventory.index,
                shard.inventory.host,
                bytes_text(shard.figures.memory_bytes),
                shard.figures.clients,
                shard.figures.ops_per_sec,
                None if shard.inventory.problem else shard.inventory.keys_examined,
                _status(shard, max_keys),
            )
            for shard in snapshot.shards
        ],
    ).splitlines()
    lines.append("")
    channels = snapshot.channels[:limit]
    if not channels:
        lines.append("no channels")
    else:
        lines.append(f"busiest channels ({len(channels)} of {len(snapshot.channels)})")
        headers = [
            "shard",
            "channel",
            "kind",
            *(["subscribers"] if pubsub else []),
            "messages",
            "oldest",
            "growth",
        ]
        rows = [
            (
                state.row.shard,
                state.row.name,
                state.row.kind,
                *([state.row.subscribers] if pubsub else []),
                state.row.messages,
                seconds_text(state.row.oldest_seconds),
                _growth_text(state.growth),
            )
            for state in channels
        ]
        lines += render_table(headers, rows).splitlines()
    lines.append("")
    groups = snapshot.groups[:limit]
    if not groups:
        lines.append("no groups")
    else:
        lines.append(f"largest groups ({len(groups)} of {len(snapshot.groups)})")
        lines += render_table(
            ("shard", "group", size_name(pubsub)), [(row.shard, row.name, row.size) for row in groups]
        ).splitlines()
    return lines


def _status(shard: ShardState, max_keys: int) -> str:
    if shard.error is not None:
        return f"error: {shard.error}"
    if not shard.inventory.complete:
        return f"ok, stopped after {max_keys} keys (--max-keys): lists incomplete"
    return "ok"


def _growth_text(growth: float | None) -> str | None:
    if growth is None:
        return None
    return "0.0/s" if round(growth, 1) == 0 else f"{growth:+.1f}/s"
