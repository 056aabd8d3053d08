"""Fixtures of the Pub/Sub layer's tests: the layer on each server topology, and views of the servers' Pub/Sub.

``topology`` runs a test once on a single server, once on three shards, once behind Sentinel and once on a Valkey
Cluster (sharded Pub/Sub); a test file that needs fewer narrows it with
``pytest.mark.parametrize("topology", [...], indirect=True)``. Every layer made here
uses the test's own prefix (so its Pub/Sub names and queues are the test's own) and is flushed and closed after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from conftest import skip_unless_sharded_pubsub
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
    servers: list[ValkeyProcess]
    #: The same servers as ``redis://`` URLs for channels_redis (None where the peer is not run: Sentinel, cluster).
    peer_hosts: list[str] | None
    #: A Valkey Cluster: ``servers`` are its primaries, names are shard channels, queue keys carry a hash tag.
    cluster: bool = False

    def subscriptions(self, prefix: str) -> int:
        """Pub/Sub channels with at least one subscriber whose name starts with ``prefix``, on every server."""
        pattern = _glob_escape(prefix) + "*"
        total = 0
        for server in self.servers:
            with server.client() as client:
                if self.cluster:
                    total += len(client.execute_command("PUBSUB", "SHARDCHANNELS", pattern))
                else:
                    total += len(client.pubsub_channels(pattern))
        return total

    def subscribers(self, name: str) -> int:
        """Subscribers of the Pub/Sub channel ``name``, summed over the servers (each node counts its own)."""
        total = 0
        for server in self.servers:
            with server.client() as client:
                if self.cluster:
                    reply = client.execute_command("PUBSUB", "SHARDNUMSUB", name)
                    total += sum(int(count) for count in reply[1::2])
                else:
                    total += sum(count for _, count in client.pubsub_numsub(name))
        return total

    def blocked_clients(self) -> int:
        """Receives waiting on the servers: connections blocked in a command such as BZPOPMIN, plus the queue keys
        tracked for a reader's doorbell (a reader popping with a receipt waits for the server's ``invalidate``
        push; its last pop leaves the key tracked until the key changes), summed over the servers."""
        return sum(server.receives_waiting() for server in self.servers)

    def worker_queue(self, prefix: str, channel: str) -> str:
        """The key the layer queues a worker channel's messages under on this topology."""
        return f"{prefix}__worker__{{{channel}}}" if self.cluster else f"{prefix}__worker__{channel}"

    def keys(self, prefix: str) -> list[bytes]:
        found: list[bytes] = []
        for server in self.servers:
            with server.client() as client:
                found.extend(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        return found


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> Topology:
    """One server, three shards, a Sentinel-managed primary or a cluster (started once per session)."""
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
        skip_unless_sharded_pubsub(request.getfixturevalue("server_under_test"))
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        return Topology("cluster", hosts_of_cluster(cluster), cluster.primaries(), None, cluster=True)
    raise ValueError(f"unknown topology {request.param!r}")


def hosts_of_cluster(cluster: ValkeyCluster) -> list[Any]:
    """The ``hosts`` setting of ``cluster``: one cluster entry naming every node as a startup node."""
    return [{"cluster": [f"valkey://{host}:{port}" for host, port in cluster.startup_nodes()]}]


@pytest.fixture
def cluster_hosts() -> Callable[[ValkeyCluster], list[Any]]:
    """``cluster_hosts(cluster)``: the ``hosts`` setting of a cluster, for tests that start their own."""
    return hosts_of_cluster


@pytest.fixture
def hosts(topology: Topology) -> list[Any]:
    return topology.hosts


@pytest.fixture
def layer_prefix(key_prefix: str) -> str:
    """The layer's ``prefix``: unique to this test, so no other test's names or queues are ever seen."""
    return key_prefix + "asgi"


@pytest.fixture
async def make_layer(
    hosts: list[Any], layer_prefix: str
) -> AsyncIterator[Callable[..., ValkeyPubSubChannelLayer]]:
    """Build layers on the topology under test (``make_layer(capacity=3)``); all are flushed and closed after."""
    made: list[ValkeyPubSubChannelLayer] = []

    def make(**config: Any) -> ValkeyPubSubChannelLayer:
        config.setdefault("prefix", layer_prefix)
        config.setdefault("hosts", hosts)
        layer = ValkeyPubSubChannelLayer(**config)
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
def layer(make_layer: Callable[..., ValkeyPubSubChannelLayer]) -> ValkeyPubSubChannelLayer:
    """A layer with the default settings on the topology under test."""
    return make_layer()


@pytest.fixture
def eventually_blocking() -> Callable[..., Awaitable[None]]:
    """Like ``eventually`` for a condition that blocks (it asks a server with a sync client): polled in a thread."""
    return wait_in_thread


async def wait_in_thread(
    condition: Callable[[], object], what: str, timeout: float = RECEIVE_TIMEOUT
) -> None:
    """Like the ``eventually`` fixture for a condition that blocks (asks a server): polled in a thread."""

    def poll() -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    if not await asyncio.to_thread(poll):
        pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}")


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
