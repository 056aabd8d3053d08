"""Every host form connects through ConnectionManager and round-trips a command; bad credentials and TLS mistakes
fail at once with a clear error and no retry storm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import valkey

from channels_valkey.sentinel import ConnectionManager, ResiliencePolicy, ShardUnavailable, decode_hosts

from conftest import ACL_USER
from servers.certificates import CertificateFiles
from servers.process import ValkeyProcess
from servers.tls_proxy import TLSProxy
from servers.tls_sentinel import TLSSentinelGroup
from servers.topologies import SENTINEL_PASSWORD, SERVER_PASSWORD, SentinelGroup, SentinelServices, Shards


async def _roundtrip_every_shard(hosts: list[Any], key: str, policy: ResiliencePolicy | None = None) -> None:
    manager = ConnectionManager(decode_hosts(hosts), policy or ResiliencePolicy())
    try:
        for index in range(await manager.shard_count()):
            value = f"shard-{index}"
            await manager.execute(index, lambda c, v=value: c.set(key, v, ex=60), idempotent=True)
            assert await manager.execute(index, lambda c: c.get(key), idempotent=True) == value.encode()
    finally:
        await manager.close()


async def _connections_during(server: ValkeyProcess, work: Callable[[], Awaitable[object]]) -> int:
    """How many connections the server accepted while ``work`` ran (not counting the ones asking)."""

    def received() -> int:
        return int(server.info("stats")["total_connections_received"])

    before = await asyncio.to_thread(received)
    await work()
    return await asyncio.to_thread(received) - before - 1


async def _fails_unavailable(hosts: list[Any], policy: ResiliencePolicy | None = None) -> ShardUnavailable:
    manager = ConnectionManager(decode_hosts(hosts), policy or ResiliencePolicy())
    try:
        with pytest.raises(ShardUnavailable, match="shard 0") as caught:
            await manager.execute(0, lambda c: c.ping(), idempotent=True)
    finally:
        await manager.close()
    return caught.value


async def test_url_tuple_and_dict_forms(valkey_server: ValkeyProcess, key_prefix: str) -> None:
    host, port = valkey_server.address
    for hosts in (
        [valkey_server.url()],
        [f"redis://{host}:{port}"],
        [(host, port)],
        [{"host": host, "port": port}],
        [{"address": valkey_server.url(), "socket_keepalive": True}],
    ):
        await _roundtrip_every_shard(hosts, f"{key_prefix}k")


async def test_db_index_is_the_one_written(valkey_server: ValkeyProcess, key_prefix: str) -> None:
    await _roundtrip_every_shard([valkey_server.url(db=3)], f"{key_prefix}db")
    with valkey_server.client(db=3) as client:
        assert client.get(f"{key_prefix}db") == b"shard-0"
    with valkey_server.client(db=0) as client:
        assert client.get(f"{key_prefix}db") is None


async def test_tls_with_certificate_check(tls_valkey: TLSProxy, key_prefix: str) -> None:
    await _roundtrip_every_shard(
        [{"address": tls_valkey.url(), "ssl_ca_certs": str(tls_valkey.ca_file)}], key_prefix
    )


async def test_tls_without_certificate_check(tls_valkey: TLSProxy, key_prefix: str) -> None:
    await _roundtrip_every_shard([{"address": tls_valkey.url(), "ssl_cert_reqs": None}], key_prefix)


async def test_unix_socket(unix_valkey: ValkeyProcess, key_prefix: str) -> None:
    assert unix_valkey.unix_socket is not None
    await _roundtrip_every_shard([f"unix://{unix_valkey.unix_socket}?db=1"], key_prefix)


async def test_password_and_acl_user(secured_valkey: ValkeyProcess, key_prefix: str) -> None:
    host, port = secured_valkey.address
    user, password = ACL_USER
    await _roundtrip_every_shard([f"valkey://:{SERVER_PASSWORD}@{host}:{port}/0"], key_prefix)
    await _roundtrip_every_shard([f"valkey://{user}:{password}@{host}:{port}/0"], key_prefix)
    await _roundtrip_every_shard(
        [{"host": host, "port": port, "username": user, "password": password}], key_prefix
    )


async def test_sentinel_and_mixed_shards(
    sentinel_group: SentinelGroup, valkey_shards: Shards, key_prefix: str
) -> None:
    await _roundtrip_every_shard([sentinel_group.host_entry()], key_prefix)
    await _roundtrip_every_shard([valkey_shards.servers[0].url(), sentinel_group.host_entry()], key_prefix)
    primary = sentinel_group.current_primary()
    with primary.client() as client:
        assert client.get(key_prefix) == b"shard-1"


async def test_sentinel_services_form_discovers_the_primary(
    sentinel_group: SentinelGroup, key_prefix: str
) -> None:
    entry = {
        "sentinels": sentinel_group.sentinel_addresses,
        "services": [],
        "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
    }
    manager = ConnectionManager(decode_hosts([entry]))
    with pytest.raises(RuntimeError, match=r"'services: \[\]' Sentinel entry are not known yet"):
        manager.ring_now()
    try:
        assert await manager.shard_count() == 1
        assert manager.ring_now().size == 1
        await manager.execute(0, lambda c: c.set(key_prefix, "x"), idempotent=True)
    finally:
        await manager.close()
    with sentinel_group.current_primary().client() as client:
        assert client.get(key_prefix) == b"x"


async def test_services_discovery_makes_a_shard_per_primary_once_for_the_managers_life(
    sentinel_services: SentinelServices, server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    manager = ConnectionManager(decode_hosts([sentinel_services.entry([])]))
    try:
        assert (await manager.ring()).size == 2
        for index, name in enumerate(sentinel_services.names):
            await manager.execute(index, lambda c, name=name: c.set(key_prefix, name), idempotent=True)
        # Discovered once: a primary the Sentinels start monitoring later is no shard, after reopening either
        # (every other process's ring still has two).
        await manager.close()
        sentinel_services.group.monitor("third", server_factory("third"))
        assert await manager.shard_count() == 2
        assert manager.ring_now().size == 2
        assert await manager.execute(1, lambda c: c.get(key_prefix), idempotent=True) == b"second"
    finally:
        await manager.close()
    for primary, name in zip(sentinel_services.primaries(), sentinel_services.names, strict=True):
        with primary.client() as client:
            assert client.get(key_prefix) == name.encode()


async def test_wrong_password_fails_at_once(secured_valkey: ValkeyProcess) -> None:
    host, port = secured_valkey.address
    errors: list[ShardUnavailable] = []

    async def attempt() -> None:
        errors.append(await _fails_unavailable([f"valkey://:not-the-password@{host}:{port}"]))

    assert await _connections_during(secured_valkey, attempt) == 1  # one try, no retry storm
    assert isinstance(errors[0].cause, valkey.AuthenticationError)
    assert "not-the-password" not in str(errors[0])


async def test_wrong_ca_fails_at_once(
    tls_valkey: TLSProxy, certificates: CertificateFiles, valkey_server: ValkeyProcess
) -> None:
    hosts = [{"address": tls_valkey.url(), "ssl_ca_certs": str(certificates.wrong_ca_file)}]
    errors: list[ShardUnavailable] = []

    async def attempt() -> None:
        errors.append(await _fails_unavailable(hosts))

    assert await _connections_during(valkey_server, attempt) <= 1
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors[0])


@pytest.mark.slow
async def test_wrong_ca_for_the_sentinels_or_the_primary_fails_within_a_second(
    private_tls_sentinel_group: TLSSentinelGroup, certificates: CertificateFiles
) -> None:
    group = private_tls_sentinel_group
    wrong = str(certificates.wrong_ca_file)
    primary_proxy = group.proxy_of(group.current_primary())
    wrong_for_primary = group.host_entry(ssl_ca_certs=wrong)
    wrong_for_sentinels = group.host_entry()
    wrong_for_sentinels["sentinel_kwargs"] = {**group.sentinel_kwargs, "ssl_ca_certs": wrong}
    for entry, tried_primary in ((wrong_for_primary, 1), (wrong_for_sentinels, 0)):
        tries_before = primary_proxy.accepted_connections
        started = time.monotonic()
        error = await _fails_unavailable([entry])
        took = time.monotonic() - started
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert took < 1.0
        assert primary_proxy.accepted_connections - tries_before == tried_primary  # one try, no retry storm
    assert primary_proxy.tls_handshakes == 0


async def test_tls_client_on_a_plaintext_port_fails_after_the_connect_timeout(
    valkey_server: ValkeyProcess,
) -> None:
    host, port = valkey_server.address

    async def attempt() -> None:
        await _fails_unavailable([f"valkeys://{host}:{port}"], ResiliencePolicy(connect_timeout=0.5))

    assert await _connections_during(valkey_server, attempt) == 1
