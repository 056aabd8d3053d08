"""The shards of one :class:`~channels_valkey.sentinel.ConnectionManager` on one event loop.

Connections belong to the loop that opened them, so each loop gets its own :class:`Shard` / :class:`ClusterShard`
objects, made on the loop's first command and closed (or their sockets parked) when the loop closes. The manager
keeps one :class:`LoopShards` per loop; this module holds that entry and how the shard objects are made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from channels_valkey.sentinel.cluster import ClusterShard
from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.follower import PrimaryFollower
from channels_valkey.sentinel.parking import ConnectionParks
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.shard import Shard
from channels_valkey.sentinel.shard_protocol import ShardConnection
from channels_valkey.sentinel.specs import ClusterHost, HostSpec, SentinelHost


class LoopShards:
    """One loop's shards, built once by ``build`` (which may ask the Sentinels first) and closed with the loop."""

    def __init__(self, build: Callable[[], Awaitable[list[ShardConnection]]]) -> None:
        self._build = build
        #: The shards once built: commands read this directly, without a coroutine for :meth:`get`.
        self.shards: list[ShardConnection] | None = None
        self._building = asyncio.Lock()

    async def get(self) -> list[ShardConnection]:
        if self.shards is not None:
            return self.shards
        async with self._building:
            if self.shards is None:
                self.shards = await self._build()
        return self.shards

    async def aclose(self, *, park: bool = False) -> None:
        shards, self.shards = self.shards or [], None
        for shard in shards:
            await shard.aclose(park=park)


def make_shards(
    specs: Sequence[HostSpec],
    policy: ResiliencePolicy,
    block_seconds: float,
    *,
    parks: ConnectionParks,
    counts: Callable[[int], ShardCounts],
    follower: Callable[[int, SentinelHost], PrimaryFollower],
) -> list[ShardConnection]:
    """A shard object for each of ``specs`` (resolved: no ``services: []`` entry left), for the running loop."""
    shards: list[ShardConnection] = []
    for index, spec in enumerate(specs):
        if isinstance(spec, ClusterHost):
            shards.append(ClusterShard(index, spec, policy, block_seconds, counts=counts(index), parks=parks))
        else:
            shards.append(
                Shard(
                    index,
                    spec,
                    policy,
                    block_seconds,
                    counts=counts(index),
                    parks=parks,
                    park_key=(index,),
                    follower=follower(index, spec) if isinstance(spec, SentinelHost) else None,
                )
            )
    return shards
