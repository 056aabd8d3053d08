"""``channels-valkey inspect``: what one layer's prefix holds on its servers now.

Core layer: every channel queue with its length and the age of its oldest message, and every group with its live
members (as ``group_channels`` counts them, which also drops members past ``group_expiry``, as the next
``group_send`` would). Pub/Sub layer: the subscribed channels and groups with their subscriber counts, and the
worker queues. Keys are found with ``SCAN``, never ``KEYS``, at most ``--max-keys`` per shard (per primary of a
Valkey Cluster). Exit status: 0, or 1 when a shard could not be inspected, 2 when the options or settings are wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from channels_valkey.cli.findings import Finding, exit_status, summary
from channels_valkey.cli.inventory import ShardInventory, add_max_keys_argument, size_name, take_inventory
from channels_valkey.cli.output import render_json, render_table, seconds_text
from channels_valkey.cli.shards import open_shards
from channels_valkey.cli.targets import Target, TargetError, add_target_arguments, resolve_target


async def _inspect_all(target: Target, limit: int) -> list[ShardInventory]:
    try:
        async with open_shards(target.specs, target.instance.policy) as slots:
            return list(
                await asyncio.gather(
                    *(take_inventory(slot, target, limit, command="inspect") for slot in slots)
                )
            )
    finally:
        await target.instance.close_pools()


def _findings(shards: list[ShardInventory], limit: int) -> list[Finding]:
    findings = []
    for shard in shards:
        if shard.problem is not None:
            findings.append(Finding("error", shard.problem, shard.index, shard.host))
        elif not shard.complete:
            findings.append(
                Finding(
                    "warning",
                    f"stopped after {limit} keys (--max-keys): there may be more, the lists are incomplete",
                    shard.index,
                    shard.host,
                )
            )
        for group in shard.groups:
            if group.note:
                findings.append(
                    Finding("note", f"group {group.name!r}: {group.note}", shard.index, shard.host)
                )
    return findings


def _print_tables(target: Target, shards: list[ShardInventory]) -> None:
    channels = sorted(
        (row for shard in shards for row in shard.channels), key=lambda row: (row.name, row.shard)
    )
    groups = sorted((row for shard in shards for row in shard.groups), key=lambda row: (row.name, row.shard))
    pubsub = target.layer == "pubsub"
    if not channels:
        print("no channels")
    elif pubsub:
        headers: tuple[str, ...] = ("shard", "channel", "kind", "subscribers", "messages", "oldest")
        print(
            render_table(
                headers,
                [
                    (
                        row.shard,
                        row.name,
                        row.kind,
                        row.subscribers,
                        row.messages,
                        seconds_text(row.oldest_seconds),
                    )
                    for row in channels
                ],
            )
        )
    else:
        headers = ("shard", "channel", "kind", "messages", "oldest")
        rows = [
            (row.shard, row.name, row.kind, row.messages, seconds_text(row.oldest_seconds))
            for row in channels
        ]
        print(render_table(headers, rows))
    print()
    if not groups:
        print("no groups")
    else:
        print(
            render_table(
                ("shard", "group", size_name(pubsub)), [(row.shard, row.name, row.size) for row in groups]
            )
        )


def _document(
    target: Target, shards: list[ShardInventory], limit: int, findings: list[Finding], status: int
) -> Any:
    pubsub = target.layer == "pubsub"
    return {
        "layer": target.layer,
        "prefix": target.prefix,
        "source": target.source,
        "max_keys": limit,
        "shards": [
            {
                "index": shard.index,
                "host": shard.host,
                "keys_examined": shard.keys_examined,
                "complete": shard.complete and shard.problem is None,
                "problem": shard.problem,
            }
            for shard in shards
        ],
        "channels": [row.as_json(pubsub) for shard in shards for row in shard.channels],
        "groups": [row.as_json(pubsub) for shard in shards for row in shard.groups],
        "findings": [finding.as_json() for finding in findings],
        "status": status,
    }


def run(args: argparse.Namespace) -> int:
    """Inspect every shard of the target and print what it holds; return the exit status."""
    try:
        target = resolve_target(args)
    except TargetError as error:
        print(f"channels-valkey inspect: {error}", file=sys.stderr)
        return 2
    shards = asyncio.run(_inspect_all(target, args.max_keys))
    findings = _findings(shards, args.max_keys)
    status = exit_status(findings)
    if args.json:
        print(render_json(_document(target, shards, args.max_keys, findings, status)))
        return status
    print(f"{target.layer} layer, prefix {target.prefix!r} ({target.source})")
    print()
    _print_tables(target, shards)
    print()
    for finding in findings:
        print(finding.line())
    channels = sum(len(shard.channels) for shard in shards)
    groups = sum(len(shard.groups) for shard in shards)
    examined = sum(shard.keys_examined for shard in shards)
    print(
        f"{len(shards)} shard{'s' if len(shards) != 1 else ''}, {channels} channel{'s' if channels != 1 else ''}, "
        f"{groups} group{'s' if groups != 1 else ''}, {examined} key{'s' if examined != 1 else ''} examined: "
        f"{summary(findings)} (exit status {status})"
    )
    return status


def register(commands: Any) -> None:
    """Add ``inspect`` to the sub-commands."""
    parser = commands.add_parser(
        "inspect",
        help="list a layer's channels (queue length, oldest message) and groups on its servers",
        description="List what one prefix holds on every shard (every primary of a Valkey Cluster): channels "
        "with their queue length and the age of their oldest message, groups with their members (core) or "
        "subscribers (Pub/Sub). Keys are found with SCAN, never KEYS. Exit status: 0, 1 when a shard could not "
        "be inspected, 2 when the options or the settings are wrong.",
    )
    add_target_arguments(parser)
    add_max_keys_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=run)
