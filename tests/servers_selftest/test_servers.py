"""The server fixtures themselves: each topology is real, reachable, isolated and fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import valkey

from conftest import ACL_USER
from servers.process import ServerError, ValkeyProcess
from servers.tls_sentinel import TLSSentinelGroup
from servers.topologies import SENTINEL_PASSWORD, SERVER_PASSWORD, SentinelGroup, Shards, add_acl_user


def test_standalone_server_is_real_and_not_on_the_default_port(valkey_server: ValkeyProcess) -> None:
    assert valkey_server.port != 6379
    with valkey_server.client() as client:
        info = client.info("server")
    assert int(info["valkey_version"].split(".")[0]) >= 7


@pytest.mark.parametrize("run", range(3))
def test_each_test_starts_with_an_empty_key_prefix(
    valkey_server: ValkeyProcess, key_prefix: str, run: int
) -> None:
    # Each run leaves a key behind; the next run's prefix must not see it (nor anything else).
    with valkey_server.client() as client:
        assert list(client.scan_iter(match=f"{key_prefix}*", count=1000)) == []
        client.set(f"{key_prefix}left-behind", run)


def test_shards_are_independent_servers(valkey_shards: Shards, key_prefix: str) -> None:
    assert len({server.port for server in valkey_shards}) == 3
    first, second, _ = valkey_shards.servers
    with first.client() as client:
        client.set(f"{key_prefix}only-here", 1)
    with second.client() as client:
        assert client.exists(f"{key_prefix}only-here") == 0


def test_secured_server_needs_the_password_and_knows_the_acl_user(secured_valkey: ValkeyProcess) -> None:
    with (
        secured_valkey.client(password=None) as anonymous,
        pytest.raises(valkey.exceptions.AuthenticationError),
    ):
        anonymous.ping()
    with secured_valkey.client(password=SERVER_PASSWORD) as admin:
        assert admin.ping()
    user, password = ACL_USER
    with secured_valkey.client(username=user, password=password) as app:
        assert app.acl_whoami() == "app-user"


def test_restricted_acl_user_is_refused_other_commands(
    secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    add_acl_user(secured_valkey, "zadd-only", "pw", [f"~{key_prefix}*", "+zadd", "+ping"])
    with secured_valkey.client(username="zadd-only", password="pw") as client:
        assert client.zadd(f"{key_prefix}q", {"m": 1}) == 1
        with pytest.raises(valkey.exceptions.NoPermissionError):
            client.zrange(f"{key_prefix}q", 0, -1)


def test_unix_socket_server(unix_valkey: ValkeyProcess) -> None:
    assert unix_valkey.unix_socket is not None
    with valkey.Valkey(unix_socket_path=unix_valkey.unix_socket) as client:
        assert client.ping()


def test_sentinels_require_their_password_and_name_the_primary(sentinel_group: SentinelGroup) -> None:
    sentinel = sentinel_group.sentinels[0]
    with sentinel.client(password=None) as anonymous, pytest.raises(valkey.exceptions.AuthenticationError):
        anonymous.sentinel_masters()
    with sentinel.client(password=SENTINEL_PASSWORD) as client:
        host, port = client.sentinel_get_master_addr_by_name(sentinel_group.service_name)
    assert (host.decode(), int(port)) == sentinel_group.current_primary().address


def test_sentinel_replica_follows_the_primary(sentinel_group: SentinelGroup, key_prefix: str) -> None:
    primary = sentinel_group.current_primary()
    replica = next(node for node in sentinel_group.nodes if node is not primary)
    with primary.client() as client:
        client.set(f"{key_prefix}k", "v")
        assert client.wait(1, 5000) == 1
    with replica.client() as client:
        assert client.get(f"{key_prefix}k") == b"v"


@pytest.mark.slow
def test_private_sentinel_group_fails_over_after_kill(private_sentinel_group: SentinelGroup) -> None:
    group = private_sentinel_group
    old = group.kill_primary()
    new = group.wait_for_new_primary(old, timeout=15)
    assert new is not old
    group.rejoin(old)
    assert group.current_primary() is new


def _reported_addresses(group: TLSSentinelGroup) -> set[tuple[str, int]]:
    """Every node address any Sentinel reports: the primary's and the replicas'."""
    reported: set[tuple[str, int]] = set()
    for sentinel in group.sentinels:
        with sentinel.client() as client:
            host, port = client.sentinel_get_master_addr_by_name(group.service_name)
            reported.add((host.decode() if isinstance(host, bytes) else host, int(port)))
            reported.update((r["ip"], int(r["port"])) for r in client.sentinel_slaves(group.service_name))
    return reported


@pytest.mark.slow
def test_tls_sentinel_group_names_only_proxies_and_fails_over_through_them(
    private_tls_sentinel_group: TLSSentinelGroup, key_prefix: str
) -> None:
    group = private_tls_sentinel_group
    proxies = {group.address_of(node) for node in group.nodes}
    assert _reported_addresses(group) == proxies
    assert not proxies & {node.address for node in group.nodes}
    sentinel_tls = {"password": SENTINEL_PASSWORD, "ssl": True, "ssl_ca_certs": str(group.ca_file)}
    host, port = group.sentinel_addresses[0]
    with valkey.Valkey(host, port, socket_timeout=5, **sentinel_tls) as sentinel:
        primary_address = sentinel.sentinel_get_master_addr_by_name(group.service_name)
    assert (primary_address[0].decode(), int(primary_address[1])) == group.address_of(group.current_primary())
    with valkey.Valkey(
        *primary_address, ssl=True, ssl_ca_certs=str(group.ca_file), socket_timeout=5
    ) as client:
        client.set(f"{key_prefix}k", "v")
        assert client.wait(1, 5000) == 1  # the replica follows through the same proxy, in plaintext
    assert group.proxy_of(group.current_primary()).tls_handshakes == 1
    assert group.proxy_of(group.sentinels[0]).tls_handshakes == 1

    old = group.kill_primary()
    new = group.wait_for_new_primary(old, timeout=15)
    with new.client() as client:
        assert client.get(f"{key_prefix}k") == b"v"
    group.rejoin(old)
    assert group.current_primary() is new
    assert _reported_addresses(group) == proxies


def test_restart_keeps_the_port(server_factory, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    port = server.port
    server.kill()
    server.restart()
    assert server.port == port
    with server.client() as client:
        assert client.ping()


def test_a_dead_server_is_reported_with_its_log(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    server.kill()
    with pytest.raises(ServerError, match=r"is not running; log: .*server\.log"):
        server.ensure_running()


def test_a_server_that_cannot_start_names_its_log(tmp_path: Path) -> None:
    server = ValkeyProcess(tmp_path, "broken", {"no-such-directive": "1"})
    with pytest.raises(ServerError) as caught:
        server.start(timeout=5)
    message = str(caught.value)
    assert str(server.log_file) in message
    assert "no-such-directive" in message
    assert not server.is_running()


def test_server_binary_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VALKEY_SERVER_BINARY", str(tmp_path / "missing"))
    with pytest.raises(ServerError, match="VALKEY_SERVER_BINARY"):
        ValkeyProcess(tmp_path, "x").start()
