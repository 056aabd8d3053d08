"""A group of 20,000 members gets one ``group_send``, and the server is never held for more than 10 ms at a time by
it: the server's own SLOWLOG times every command it runs (threshold 0), and the longest must stay under 10 ms.

The core layer writes one queue per member, so it must batch: the FIELD-NOTES measured one script adding to 20,000
queues at 126 ms. The Pub/Sub layer publishes once to the group's channel; its fan-out to 20,000 local channels
happens in the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from faults.support import CORE, PUBSUB, make_layer, report, server_time
from servers.process import ValkeyProcess

#: The issue's group size.
MEMBERS = 20_000
#: The issue's bound on any one stretch of the server's time, in microseconds.
LONGEST_US = 10_000
#: Group adds (or new channels) in flight at once while the group is built.
CONCURRENCY = 500


async def _in_waves(calls: list[Callable[[], object]]) -> list[object]:
    results: list[object] = []
    for start in range(0, len(calls), CONCURRENCY):
        results += await asyncio.gather(*(call() for call in calls[start : start + CONCURRENCY]))  # type: ignore[misc]
    return results


async def test_core_group_send_to_20000_members_never_blocks_the_server_10_ms(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    layer = make_layer(CORE, [server.url()], key_prefix)
    members = [f"member.{index}" for index in range(MEMBERS)]
    try:
        await _in_waves([lambda m=member: layer.group_add("crowd", m) for member in members])
        assert len(await layer.group_channels("crowd")) == MEMBERS
        with server_time(server) as timed:
            await layer.group_send("crowd", {"type": "all", "text": "hello"})
        with server.client() as client, client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.zcard(layer.queue_key(member))
            queued = pipe.execute()
        report(
            "group_send to 20,000 members, core",
            script_calls=timed.calls.get("EVALSHA", 0) + timed.calls.get("EVAL", 0),
            longest_slowlog_ms=timed.longest_us / 1000,
            longest_latency_monitor_ms=timed.monitor_ms,
            longest=timed.longest(),
            members_reached=sum(queued),
        )
        assert queued == [1] * MEMBERS
        assert timed.longest_us < LONGEST_US, f"the server was held by {timed.longest()}"
        assert timed.monitor_ms < LONGEST_US // 1000, f"the latency monitor saw {timed.monitor_ms} ms"
        assert await layer.receive(members[-1]) == {"type": "all", "text": "hello"}
        with server_time(server) as bulk:
            result = await layer.group_send_many([("crowd", {"type": "bulk"})])
        report(
            "group_send_many to 20,000 members, core",
            script_calls=bulk.calls.get("EVALSHA", 0) + bulk.calls.get("EVAL", 0),
            longest_slowlog_ms=bulk.longest_us / 1000,
            longest_latency_monitor_ms=bulk.monitor_ms,
            longest=bulk.longest(),
        )
        # Reported, not bound: group_send_many reads members inside a script (left for later, see the README).
        assert result.sent == 1
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_pubsub_group_send_to_20000_members_never_blocks_the_server_10_ms(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    server = server_factory()
    layer = make_layer(PUBSUB, [server.url()], key_prefix, capacity=10)
    try:
        channels = [str(name) for name in await _in_waves([layer.new_channel] * MEMBERS)]
        await _in_waves([lambda c=channel: layer.group_add("crowd", c) for channel in channels])
        with server_time(server) as timed:
            await layer.group_send("crowd", {"type": "all", "text": "hello"})
            received = await asyncio.wait_for(
                asyncio.gather(*(layer.receive(channel) for channel in channels)), 60
            )
        report(
            "group_send to 20,000 members, pubsub",
            publishes=timed.calls.get("PUBLISH", 0),
            longest_slowlog_ms=timed.longest_us / 1000,
            longest_latency_monitor_ms=timed.monitor_ms,
            longest=timed.longest(),
            members_reached=len(received),
        )
        assert received == [{"type": "all", "text": "hello"}] * MEMBERS
        assert timed.calls.get("PUBLISH") == 1
        assert timed.longest_us < LONGEST_US, f"the server was held by {timed.longest()}"
        assert timed.monitor_ms < LONGEST_US // 1000, f"the latency monitor saw {timed.monitor_ms} ms"
    finally:
        await layer.close_pools()
