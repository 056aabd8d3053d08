"""A Valkey Cluster through ConnectionManager: commands go to the primary of their key's slot, follow a slot that
moves (MOVED) or is moving (ASK), and an unreachable cluster fails at once; credentials and TLS reach every node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from valkey.asyncio.connection import SSLConnection

from channels_valkey.sentinel import (
    ClusterShard,
    ConnectionManager,
    ResiliencePolicy,
    ShardUnavailable,
    decode_hosts,
)

from servers.certificates import create_certificates
from servers.cluster import TLSCluster, ValkeyCluster, start_cluster
from servers.process import ValkeyProcess, free_port, wait_until

CLUSTER_PASSWORD = "cluster-secret-7"


@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """Three primaries (no replicas) that require a password, and an ACL user ``app`` on every node."""
    cluster = start_cluster(
        tmp_path_factory.mktemp("secured-cluster"),
        "cluster",
        replicas_per_primary=0,
        password=CLUSTER_PASSWORD,
    )
    try:
        for node in cluster.nodes:
            with node.client() as client:
                client.execute_command("ACL", "SETUSER", "app", "on", ">app-secret", "~*", "&*", "+@all")
        yield cluster
    finally:
        cluster.stop()


def _manager(cluster: ValkeyCluster) -> ConnectionManager:
    return ConnectionManager(decode_hosts([{"cluster": [cluster.url()]}]))


#: A retry budget far longer than a test waits (:data:`OUTCOME_TIMEOUT`): a failure that is "raised at once" must be
#: raised although retrying is allowed for an hour, so a manager that retried it would run into the timeout.
PATIENT = ResiliencePolicy(retry_attempts=100_000, retry_deadline=3600.0)
#: Longest a test waits for a call that must fail without retrying; generous, it only stops a retrying manager.
OUTCOME_TIMEOUT = 30.0


async def test_each_key_lands_on_the_primary_of_its_slot(
    valkey_cluster: ValkeyCluster, key_prefix: str
) -> None:
    manager = _manager(valkey_cluster)
    keys = [f"{key_prefix}{index}" for index in range(30)]
    try:
        assert isinstance(await manager.shard(0), ClusterShard)
        for key in keys:
            await manager.execute_command(0, "SET", key, key, idempotent=True)
        script = "return redis.call('SET', KEYS[1], ARGV[1])"
        await manager.execute_command(0, "EVAL", script, 1, f"{key_prefix}{{tag}}x", "s", idempotent=True)
        assert len(await manager.primaries(0)) == 3
    finally:
        await manager.close()
    used = set()
    for key in [*keys, f"{key_prefix}{{tag}}x"]:
        owner = valkey_cluster.primary_for(key)
        used.add(owner.name)
        with owner.client() as client:
            assert client.get(key) is not None
    assert len(used) == 3  # thirty keys spread over every primary


async def test_a_blocking_pop_goes_to_the_owner(valkey_cluster: ValkeyCluster, key_prefix: str) -> None:
    manager = _manager(valkey_cluster)
    key = f"{key_prefix}queue"
    try:
        cluster_shard = await manager.shard(0)
        waiting = asyncio.ensure_future(cluster_shard.blocking_call(("BZPOPMIN", key, 5), _nothing_lost))
        await manager.execute_command(0, "ZADD", key, 1, "m", idempotent=True)
        assert await asyncio.wait_for(waiting, 10) == [key.encode(), b"m", b"1"]
    finally:
        await manager.close()


async def _nothing_lost(reply: object) -> None:
    raise AssertionError(f"the pop was interrupted with {reply!r}")


async def test_commands_follow_a_slot_that_moved_and_one_that_is_moving(
    private_cluster: ValkeyCluster, key_prefix: str
) -> None:
    cluster = private_cluster
    manager = _manager(cluster)
    moved, moving = f"{key_prefix}{{moved}}", f"{key_prefix}{{moving}}"
    try:
        await manager.execute_command(0, "SET", moved, "before", idempotent=True)  # the slot map is read now
        source = cluster.primary_for(moved)
        target = next(node for node in cluster.primaries() if node is not source)
        await asyncio.to_thread(cluster.migrate_slot, cluster.key_slot(moved), target)
        # The map still names the old owner: it answers MOVED and the map is read again.
        assert await manager.execute_command(0, "GET", moved, idempotent=True) == b"before"

        source = cluster.primary_for(moving)
        target = next(node for node in cluster.primaries() if node is not source)
        migrating = asyncio.create_task(
            asyncio.to_thread(cluster.migrate_slot, cluster.key_slot(moving), target, hold=1.5)
        )
        # While the slot is migrating and the key is not on the source, the source answers ASK.
        await asyncio.to_thread(
            _wait_for_migrating, source, cluster.key_slot(moving), deadline=time.monotonic() + 10
        )
        await manager.execute_command(0, "SET", moving, "asked", idempotent=True)
        await migrating
        with target.client() as client:
            assert client.get(moving) == b"asked"
    finally:
        await manager.close()


def _wait_for_migrating(node: ValkeyProcess, slot: int, *, deadline: float) -> None:
    """Wait until ``node`` shows ``slot`` as migrating away (``[slot->-target]`` in its CLUSTER NODES)."""

    def migrating() -> bool:
        with node.client() as client:
            text = client.execute_command("CLUSTER", "NODES")
        return f"[{slot}->-" in (text.decode() if isinstance(text, bytes) else str(text))

    wait_until(migrating, timeout=max(deadline - time.monotonic(), 0.1), message=f"slot {slot} to migrate")


async def test_an_unreachable_cluster_fails_at_once() -> None:
    manager = ConnectionManager(decode_hosts([{"cluster": [("127.0.0.1", free_port())]}]), PATIENT)
    try:
        with pytest.raises(ShardUnavailable, match=r"cluster of 127\.0\.0\.1"):
            await asyncio.wait_for(manager.execute_command(0, "GET", "k", idempotent=True), OUTCOME_TIMEOUT)
    finally:
        await manager.close()


async def test_single_server_calls_are_refused_on_a_cluster(valkey_cluster: ValkeyCluster) -> None:
    manager = _manager(valkey_cluster)
    try:
        with pytest.raises(TypeError, match="is a Valkey Cluster"):
            await manager.execute(0, lambda client: client.ping(), idempotent=True)
        with pytest.raises(TypeError, match="is a Valkey Cluster"):
            await manager.client(0)
    finally:
        await manager.close()


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(lambda port: {"cluster": [f"valkey://:{CLUSTER_PASSWORD}@127.0.0.1:{port}"]}, id="url"),
        pytest.param(lambda port: {"cluster": [("127.0.0.1", port)], "password": CLUSTER_PASSWORD}, id="key"),
        pytest.param(
            lambda port: {"cluster": [("127.0.0.1", port)], "username": "app", "password": "app-secret"},
            id="acl-user",
        ),
    ],
)
async def test_credentials_reach_every_node(
    secured_cluster: ValkeyCluster, key_prefix: str, entry: Callable[[int], dict[str, Any]]
) -> None:
    manager = ConnectionManager(decode_hosts([entry(secured_cluster.nodes[0].port)]))
    keys = [f"{key_prefix}{index}" for index in range(12)]
    try:
        for key in keys:
            await manager.execute_command(0, "SET", key, "v", idempotent=True)
    finally:
        await manager.close()
    assert {secured_cluster.primary_for(key).name for key in keys} == {
        node.name for node in secured_cluster.nodes
    }


async def test_a_wrong_password_fails_at_once(secured_cluster: ValkeyCluster) -> None:
    port = secured_cluster.nodes[0].port
    manager = ConnectionManager(decode_hosts([{"cluster": [("127.0.0.1", port)], "password": "wrong"}]))
    try:
        with pytest.raises(ShardUnavailable, match="AuthenticationError"):
            await manager.execute_command(0, "GET", "k", idempotent=True)
    finally:
        await manager.close()


# TLS: a proxy in front of each node, which announces the proxy's port -------------------------------------------


def _tls_entry(cluster: TLSCluster, form: str) -> dict[str, Any]:
    """The cluster entry of ``cluster`` over TLS: a ``valkeys://`` URL, or ``"ssl": True`` and a (host, port)."""
    if form == "url":
        return {"cluster": [cluster.url()], "ssl_ca_certs": str(cluster.ca_file)}
    return {"cluster": [cluster.proxies[0].address], "ssl": True, "ssl_ca_certs": str(cluster.ca_file)}


def _keys_on_every_primary(cluster: TLSCluster, prefix: str) -> dict[str, ValkeyProcess]:
    """A few keys, with the primary serving each, until every primary serves one."""
    owners: dict[str, ValkeyProcess] = {}
    primaries = {node.name for node in cluster.primaries()}
    for index in range(100):
        key = f"{prefix}{index}"
        owners[key] = cluster.primary_for(key)
        if {node.name for node in owners.values()} == primaries:
            return owners
    raise AssertionError(f"100 keys and still a primary of {sorted(primaries)} without one")


@pytest.mark.parametrize("form", ["url", "keys"])
async def test_tls_reaches_every_primary_through_its_proxy(
    tls_cluster: TLSCluster, key_prefix: str, form: str
) -> None:
    manager = ConnectionManager(decode_hosts([_tls_entry(tls_cluster, form)]))
    owners = _keys_on_every_primary(tls_cluster, key_prefix)
    queues = {owner.name: f"{key_prefix}{{{key}}}queue" for key, owner in owners.items()}
    pops_before = {node.name: _blocking_pops(node) for node in tls_cluster.nodes}
    try:
        for key in owners:
            await manager.execute_command(0, "SET", key, key, idempotent=True)
        cluster_shard = await manager.shard(0)
        assert isinstance(cluster_shard, ClusterShard)
        waiting = [
            asyncio.ensure_future(cluster_shard.blocking_call(("BZPOPMIN", queue, 5), _nothing_lost))
            for queue in queues.values()
        ]
        for queue in queues.values():
            await manager.execute_command(0, "ZADD", queue, 1, "m", idempotent=True)
        popped = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert popped == [[queue.encode(), b"m", b"1"] for queue in queues.values()]

        primaries = await manager.primaries(0)
        assert {(shard.spec.options["host"], shard.spec.options["port"]) for shard in primaries} == {
            proxy.address for proxy in tls_cluster.proxies
        }
        assert all(issubclass(shard.spec.options["connection_class"], SSLConnection) for shard in primaries)
        # Every connection the manager opened came through a proxy; none reached a plaintext port.
        await asyncio.to_thread(tls_cluster.wait_only_through_proxies)
    finally:
        await manager.close()
    for key, owner in owners.items():
        with owner.client() as client:
            assert client.get(key) == key.encode()
            client.delete(key)
    # One blocking pop ran on each primary, the one serving its queue.
    pops = {node.name: _blocking_pops(node) - pops_before[node.name] for node in tls_cluster.nodes}
    assert pops == dict.fromkeys(queues, 1)


def _blocking_pops(node: ValkeyProcess) -> int:
    return int(node.info("commandstats").get("cmdstat_bzpopmin", {}).get("calls", 0))


class _CountedTLSConnection(SSLConnection):
    """A real TLS connection that counts how often it tries to connect (each TCP connect and TLS handshake)."""

    attempts = 0

    async def _connect(self) -> None:
        type(self).attempts += 1
        await super()._connect()


@pytest.mark.parametrize("form", ["url", "keys"])
async def test_tls_with_a_ca_that_did_not_sign_the_nodes_fails_at_once(
    tls_cluster: TLSCluster, form: str
) -> None:
    entry = {**_tls_entry(tls_cluster, form), "ssl_ca_certs": str(tls_cluster.certificates.wrong_ca_file)}
    manager = ConnectionManager(decode_hosts([entry]), PATIENT)
    try:
        with pytest.raises(ShardUnavailable, match=r"\(TLS\)\) is unavailable.*CERTIFICATE_VERIFY_FAILED"):
            await asyncio.wait_for(manager.execute_command(0, "GET", "k", idempotent=True), OUTCOME_TIMEOUT)
    finally:
        await manager.close()


async def test_tls_with_the_wrong_ca_tries_each_startup_node_once(tls_cluster: TLSCluster) -> None:
    counted = type("Counted", (_CountedTLSConnection,), {})  # a counter of this test's own
    startup = [proxy.address for proxy in tls_cluster.proxies]
    entry = {
        "cluster": startup,
        "connection_class": counted,
        "ssl_ca_certs": str(tls_cluster.certificates.wrong_ca_file),
    }
    manager = ConnectionManager(decode_hosts([entry]))
    try:
        for call in range(1, 3):
            with pytest.raises(ShardUnavailable, match="certificate verify failed"):
                await manager.execute_command(0, "SET", "k", "v", idempotent=True)
            # No retries: one TLS handshake per startup node and call, then the error.
            assert counted.attempts == call * len(startup)
    finally:
        await manager.close()


async def test_a_certificate_replaced_by_an_untrusted_one_fails_at_once_after_first_contact(
    tls_cluster: TLSCluster, tmp_path: Path, key_prefix: str
) -> None:
    """Once the layer has talked to the cluster, nodes presenting certificates it cannot verify are as fatal as
    at first contact: the slot map cannot be read from any of them, and retrying would fail the same way."""
    manager = ConnectionManager(decode_hosts([_tls_entry(tls_cluster, "keys")]), PATIENT)
    trusted, untrusted = tls_cluster.certificates, create_certificates(tmp_path)
    try:
        await manager.execute_command(0, "SET", key_prefix, "v", idempotent=True)
        for proxy in tls_cluster.proxies:
            proxy.serve_certificates(untrusted)
            proxy.cut()
        with pytest.raises(ShardUnavailable, match="certificate verify failed"):
            await asyncio.wait_for(
                manager.execute_command(0, "GET", key_prefix, idempotent=True), OUTCOME_TIMEOUT
            )
    finally:
        for proxy in tls_cluster.proxies:
            proxy.serve_certificates(trusted)
        await manager.close()
