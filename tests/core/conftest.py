"""Fixtures of the core layer's tests: the layer on each server topology, and a view of what it wrote.

``topology`` runs a test once on a single server, once on three shards, once behind Sentinel and once on a Valkey
Cluster (3 primaries, 3 replicas); a test file that
needs fewer topologies narrows it with ``pytest.mark.parametrize("topology", [...], indirect=True)``. Every layer
made here writes under the test's own ``key_prefix`` and is flushed and closed after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer

from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess
from servers.topologies import SentinelGroup, Shards

#: Longest wait for a message that was sent: generous, so only a lost message fails the test.
RECEIVE_TIMEOUT = 10.0

TOPOLOGIES = ("single", "shards", "sentinel", "cluster")


@dataclass
class Topology:
    """Where a layer under test connects (``hosts``) and the data servers behind it, in shard order."""

    name: str
    hosts: list[Any]
    #: The servers that hold data: the shards in ring order, or a cluster's primaries.
    servers: list[ValkeyProcess]
    #: The same servers as ``redis://`` URLs for channels_redis (None where the peer is not used: Sentinel).
    peer_hosts: list[str] | None
    #: The cluster behind a "cluster" topology: keys then carry hash tags and live where their slot is.
    cluster: ValkeyCluster | None = None

    @property
    def shard_count(self) -> int:
        """Shards of the layer's ring: a cluster counts as one, it places keys itself."""
        return 1 if self.cluster else len(self.servers)

    def queue_key(self, prefix: str, channel: str) -> str:
        """The documented server key of a channel's queue (``name!`` for a process channel)."""
        name = channel[: channel.index("!") + 1] if "!" in channel else channel
        return f"{prefix}{{{name}}}" if self.cluster else prefix + name

    def group_key(self, prefix: str, group: str) -> str:
        """The documented server key of a group."""
        return f"{prefix}:group:{{{group}}}" if self.cluster else f"{prefix}:group:{group}"

    def server_of(self, shard: int, key: str) -> ValkeyProcess:
        """The server holding ``key``, which the layer placed on ring shard ``shard``."""
        return self.cluster.primary_for(key) if self.cluster else self.servers[shard]

    def keys(self, prefix: str) -> list[bytes]:
        """Every key on every server that starts with ``prefix`` (found with SCAN, compared literally)."""
        found: list[bytes] = []
        wanted = prefix.encode()
        for server in self.servers:
            with server.client() as client:
                found.extend(key for key in client.scan_iter(count=1000) if key.startswith(wanted))
        return found

    def holders(self, key: str) -> list[ValkeyProcess]:
        """The servers that may hold ``key``: every shard (a normal channel is spread), or its slot's primary."""
        return [self.cluster.primary_for(key)] if self.cluster else self.servers

    def members(self, key: str) -> list[bytes]:
        """The members of the sorted set ``key`` on every server, oldest first per server."""
        result: list[bytes] = []
        for server in self.holders(key):
            with server.client() as client:
                result.extend(client.zrange(key, 0, -1))
        return result

    def blocked_clients(self) -> int:
        """Receives waiting on the servers: connections blocked in a command such as BZPOPMIN, plus the queue keys
        tracked for a reader's doorbell (a reader popping with a receipt waits for the server's ``invalidate``
        push; its last pop leaves the key tracked until the key changes), summed over the servers."""
        return sum(server.receives_waiting() for server in self.servers)

    def count(self, key: str) -> int:
        """How many members the sorted set ``key`` holds, summed over the servers."""
        total = 0
        for server in self.holders(key):
            with server.client() as client:
                total += int(client.zcard(key))
        return total


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> Topology:
    """One server, three shards, or a Sentinel-managed primary (the servers are started once per session)."""
    if request.param == "single":
        server: ValkeyProcess = request.getfixturevalue("valkey_server")
        return Topology("single", [server.url()], [server], [server.url("redis")])
    if request.param == "shards":
        shards: Shards = request.getfixturevalue("valkey_shards")
        return Topology("shards", shards.urls(), list(shards), [server.url("redis") for server in shards])
    if request.param == "sentinel":
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        return Topology("sentinel", [group.host_entry()], [group.current_primary()], None)
    if request.param == "cluster":
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        return Topology("cluster", [{"cluster": [cluster.url()]}], cluster.primaries(), None, cluster)
    raise ValueError(f"unknown topology {request.param!r}")


@pytest.fixture
def hosts(topology: Topology) -> list[Any]:
    """The ``hosts`` setting of the topology under test."""
    return topology.hosts


@pytest.fixture
def layer_prefix(key_prefix: str) -> str:
    """The layer's ``prefix``: unique to this test, so no other test's keys are ever seen or flushed."""
    return key_prefix + "asgi"


@pytest.fixture
async def make_layer(hosts: list[Any], layer_prefix: str) -> AsyncIterator[Callable[..., ValkeyChannelLayer]]:
    """Build layers on the topology under test (``make_layer(capacity=3)``); all are flushed and closed after."""
    made: list[ValkeyChannelLayer] = []

    def make(**config: Any) -> ValkeyChannelLayer:
        config.setdefault("prefix", layer_prefix)
        layer = ValkeyChannelLayer(hosts=hosts, **config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        # Bounded, so that a layer bug fails the test instead of hanging the suite.
        try:
            await asyncio.wait_for(layer.flush(), RECEIVE_TIMEOUT)
        finally:
            await asyncio.wait_for(layer.close_pools(), RECEIVE_TIMEOUT)


@pytest.fixture
def layer(make_layer: Callable[..., ValkeyChannelLayer]) -> ValkeyChannelLayer:
    """A layer with the default settings on the topology under test."""
    return make_layer()


@pytest.fixture
async def peer(topology: Topology, layer_prefix: str) -> AsyncIterator[RedisChannelLayer]:
    """channels_redis's layer on the same servers and prefix as the ``layer`` fixture."""
    assert topology.peer_hosts is not None
    peer = RedisChannelLayer(hosts=topology.peer_hosts, prefix=layer_prefix)
    yield peer
    await peer.close_pools()
