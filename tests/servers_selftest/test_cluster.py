"""The Valkey Cluster fixture: a real cluster a cluster client can use, whose primaries really fail over."""

from __future__ import annotations

import asyncio
import time

import pytest
import valkey
from valkey.asyncio.cluster import ClusterNode
from valkey.asyncio.cluster import ValkeyCluster as ClusterClient

from servers.cluster import SLOTS, ValkeyCluster
from servers.process import ValkeyProcess

#: Errors a cluster client reports while a primary is down and before a replica has taken over.
OUTAGE_ERRORS = (
    valkey.exceptions.ConnectionError,
    valkey.exceptions.TimeoutError,
    valkey.exceptions.ClusterDownError,
    valkey.exceptions.ClusterError,
    valkey.exceptions.SlotNotCoveredError,
    valkey.exceptions.TryAgainError,
)


def cluster_client(cluster: ValkeyCluster) -> ClusterClient:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes()]
    return ClusterClient(startup_nodes=nodes, socket_timeout=1, socket_connect_timeout=1)


def keys_on_every_primary(cluster: ValkeyCluster, prefix: str) -> dict[int, str]:
    """One key per primary, by the primary's port."""
    found: dict[int, str] = {}
    for index in range(1000):
        key = f"{prefix}{index}"
        found.setdefault(cluster.primary_for(key).port, key)
        if len(found) == cluster.primary_count:
            return found
    raise AssertionError(f"1000 keys did not reach all primaries, only {sorted(found)}")


async def test_cluster_has_three_primaries_three_replicas_and_serves_every_slot(
    valkey_cluster: ValkeyCluster, key_prefix: str
) -> None:
    primaries, replicas = valkey_cluster.primaries(), valkey_cluster.replicas()
    assert len(primaries) == 3
    assert len(replicas) == 3
    assert {node.port for node in primaries + replicas} == {node.port for node in valkey_cluster.nodes}
    for node in valkey_cluster.nodes:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        assert "cluster_state:ok" in text
        assert f"cluster_slots_assigned:{SLOTS}" in text
    assert valkey_cluster.url() == f"valkey://127.0.0.1:{valkey_cluster.nodes[0].port}"

    keys = keys_on_every_primary(valkey_cluster, key_prefix)
    client = cluster_client(valkey_cluster)
    try:
        for port, key in keys.items():
            assert await client.set(key, f"on-{port}")
        for port, key in keys.items():
            assert await client.get(key) == f"on-{port}".encode()
    finally:
        await client.aclose()
    # Each key is stored on the primary the fixture names for it; the other primaries redirect there.
    for port, key in keys.items():
        for primary in primaries:
            with primary.client() as direct:
                if primary.port == port:
                    assert direct.exists(key) == 1
                else:
                    with pytest.raises(
                        valkey.exceptions.ResponseError, match=rf"^MOVED \d+ 127\.0\.0\.1:{port}$"
                    ):
                        direct.exists(key)


@pytest.mark.slow
async def test_a_killed_primary_fails_over_and_rejoins_as_a_replica(private_cluster: ValkeyCluster) -> None:
    key = "failover-key"
    budget = private_cluster.node_timeout_ms / 1000 + 3
    client = cluster_client(private_cluster)
    try:
        assert await client.set(key, "before")
        killed = private_cluster.kill_primary_of(key)
        killed_at = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                await client.set(key, f"after-{attempts}")
                break
            except OUTAGE_ERRORS:
                if time.monotonic() - killed_at > budget + 10:
                    raise
                await asyncio.sleep(0.05)  # pace the retries; the loop ends on the first acknowledged write
        gap = time.monotonic() - killed_at
        print(f"writes to {key!r} resumed {gap:.2f}s after kill -9 of its primary ({attempts} attempts)")
        assert gap < budget, f"writes resumed after {gap:.2f}s, more than {budget:.1f}s"
        assert await client.get(key) == f"after-{attempts}".encode()
    finally:
        await client.aclose()

    private_cluster.wait_for_failover(killed)
    new_primary: ValkeyProcess = private_cluster.primary_for(key)
    assert new_primary is not killed

    private_cluster.rejoin(killed)

    assert killed in private_cluster.replicas()
    assert killed not in private_cluster.primaries()
    replication = killed.info("replication")
    assert replication["role"] == "slave"
    assert replication["master_port"] == new_primary.port
