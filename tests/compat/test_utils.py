"""``channels_valkey.utils`` gives what channels-valkey 0.3's helpers gave, checked against their twin.

channels_redis 4's ``channels_redis.utils`` is the code 0.3 renamed (``redis`` for ``valkey``), so each helper is
run next to it on the same inputs. Where we differ on purpose (errors raised early, connect timeouts on pools) the
test says so. The pools are also used against real servers: plain, unix socket, ACL user and Sentinel.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import channels_redis.utils as peer
import pytest
import valkey.asyncio as avalkey
from valkey.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from valkey.asyncio.sentinel import SentinelConnectionPool

from channels_valkey.sentinel import HostConfigError
from channels_valkey.utils import _close_valkey, _consistent_hash, _wrap_close, create_pool, decode_hosts

from conftest import ACL_USER
from servers.process import ValkeyProcess, wait_until
from servers.topologies import SentinelGroup

# The shard hash ------------------------------------------------------------------------------------------------


def _names() -> list[str | bytes]:
    generator = random.Random(20240)
    names: list[str | bytes] = [
        "",
        "a",
        "http.request",
        "specific.abc!def",
        "chat_room",
        "ümlaut-группа",
        "💬",
    ]
    names += [f"channel-{generator.getrandbits(64):x}" for _ in range(300)]
    names += [bytes(generator.getrandbits(8) for _ in range(12)) for _ in range(50)]
    return names


@pytest.mark.parametrize("ring_size", [*range(1, 40), 100, 185, 186, 187, 255, 256, 1000, 4095, 4096, 5000])
def test_consistent_hash_places_every_name_where_0_3_did(ring_size: int) -> None:
    for name in _names():
        assert _consistent_hash(name, ring_size) == peer._consistent_hash(name, ring_size), name


@pytest.mark.parametrize(
    ("ring_size", "error"), [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_consistent_hash_names_a_bad_ring_size(ring_size: Any, error: type[Exception]) -> None:
    """0.3 failed inside its arithmetic (ZeroDivisionError for 0) or hashed with a float; we say what is wrong."""
    with pytest.raises(error, match="ring_size"):
        _consistent_hash("name", ring_size)


# Host decoding -------------------------------------------------------------------------------------------------

SAME_AS_0_3: list[Any] = [
    [("localhost", 6379)],
    [["10.0.0.5", 6380], ("10.0.0.6", 6381)],
    ["valkey://localhost:6379/2"],
    ["valkeys://app:secret@cache.example.com:6380/0", "unix:///run/valkey.sock?db=1"],
    [{"host": "10.0.0.5", "port": 6379, "db": 1, "password": "s3cret"}],
    [{"address": "valkeys://10.0.0.5:6380", "ssl_cert_reqs": None}],
    [{"sentinels": [("10.0.0.1", 26379)], "master_name": "mymaster", "sentinel_kwargs": {"password": "x"}}],
    [("localhost", 6379), "redis://other:6379", {"sentinels": [("s", 26379)], "master_name": "m", "db": 3}],
    (("localhost", 6379), ("localhost", 6380)),
]


@pytest.mark.parametrize("hosts", SAME_AS_0_3)
def test_decode_hosts_gives_what_0_3_gave(hosts: Any) -> None:
    assert decode_hosts(hosts) == peer.decode_hosts(hosts)


@pytest.mark.parametrize("hosts", [None, [], ()])
def test_decode_hosts_defaults_to_the_local_server(hosts: Any) -> None:
    """As 0.3 (channels_redis defaults to ``redis://``, the same server)."""
    assert decode_hosts(hosts) == [{"address": "valkey://localhost:6379"}]
    assert peer.decode_hosts(hosts) == [{"address": "redis://localhost:6379"}]


def test_decode_hosts_copies_dict_entries() -> None:
    entry = {"host": "localhost", "port": 6379}
    decoded = decode_hosts([entry])
    decoded[0]["port"] = 1
    assert entry == {"host": "localhost", "port": 6379}


def test_decode_hosts_reads_a_generator_once() -> None:
    hosts = (f"valkey://h{index}:6379" for index in range(3))
    assert decode_hosts(hosts) == [{"address": f"valkey://h{index}:6379"} for index in range(3)]


def test_decode_hosts_gives_one_sentinel_dict_per_named_service() -> None:
    """A form 0.3 passed on and then failed to connect with; our layers make one shard of each service."""
    entry = {"sentinels": [("s", 26379)], "services": ["shard-a", "shard-b"], "password": "pw"}
    assert decode_hosts([("localhost", 6379), entry]) == [
        {"host": "localhost", "port": 6379},
        {"sentinels": [("s", 26379)], "password": "pw", "master_name": "shard-a"},
        {"sentinels": [("s", 26379)], "password": "pw", "master_name": "shard-b"},
    ]


def test_decode_hosts_refuses_discovery_it_cannot_do_without_connecting() -> None:
    with pytest.raises(HostConfigError, match=r"'services': \[\]"):
        decode_hosts([{"sentinels": [("s", 26379)], "services": []}])


@pytest.mark.parametrize(
    ("hosts", "named"),
    [
        ("valkey://localhost:6379", "hosts must be a list"),
        (("localhost", 6379), r"hosts=\[\('localhost', 6379\)\]"),
        ([("localhost", "six")], "the port must be an int"),
        ([{"host": "localhost", "prot": 6379}], "did you mean 'port'"),
        (["valkey://localhost:6379", "http://localhost"], r"hosts\[1\]"),
        ([{"address": "valkey://:hunter2@localhost:99999"}], r"\*\*\*"),
    ],
)
def test_decode_hosts_refuses_bad_entries_at_once_by_name(hosts: Any, named: str) -> None:
    """0.3 raised ValueError only for a bare string and failed at the first connection for the rest."""
    with pytest.raises(ValueError, match=named) as caught:
        decode_hosts(hosts)
    assert isinstance(caught.value, HostConfigError)
    assert "hunter2" not in str(caught.value)


# Pools ---------------------------------------------------------------------------------------------------------

#: Keyword arguments the pools of both sides must agree on when present.
COMPARED = ("host", "port", "db", "username", "password", "path", "ssl_cert_reqs", "ssl_ca_certs")


@pytest.mark.parametrize(
    "host",
    [
        {"address": "redis://localhost:6379"},
        {"address": "redis://app:secret@10.0.0.5:6380/4"},
        {"address": "rediss://10.0.0.5:6380", "ssl_cert_reqs": None},
        {"address": "redis://10.0.0.5:6380/1", "db": 7},
        {"address": "unix:///run/valkey.sock?db=2"},
        {"host": "10.0.0.5", "port": 6379, "db": 1, "password": "s3cret"},
    ],
)
def test_create_pool_connects_where_0_3_connected(host: dict[str, Any]) -> None:
    given = dict(host)
    ours = create_pool(host)
    theirs = peer.create_pool(host)

    assert host == given, "create_pool must not modify its argument"
    assert type(ours) is avalkey.ConnectionPool
    assert ours.connection_class.__name__ == theirs.connection_class.__name__
    assert issubclass(ours.connection_class, Connection | SSLConnection | UnixDomainSocketConnection)
    for key in COMPARED:
        assert ours.connection_kwargs.get(key) == theirs.connection_kwargs.get(key), key


def test_create_pool_adds_a_connect_timeout_and_keepalive_that_options_override() -> None:
    defaults = create_pool({"address": "valkey://localhost:6379"}).connection_kwargs
    assert (defaults["socket_connect_timeout"], defaults["socket_keepalive"]) == (5.0, True)
    # No reply timeout: 0.3 callers block on these pools (BZPOPMIN for 5 s).
    assert defaults.get("socket_timeout") is None
    chosen = create_pool(
        {"address": "valkey://localhost:6379", "socket_connect_timeout": 1.5}
    ).connection_kwargs
    assert chosen["socket_connect_timeout"] == 1.5
    unix = create_pool({"address": "unix:///run/valkey.sock"}).connection_kwargs
    assert "socket_keepalive" not in unix


def test_create_pool_for_a_sentinel_entry_matches_0_3() -> None:
    host = {
        "sentinels": [("10.0.0.1", 26379), ("10.0.0.2", 26379)],
        "master_name": "mymaster",
        "sentinel_kwargs": {"password": "sentinel-secret"},
        "password": "primary-secret",
        "db": 2,
    }
    ours = create_pool(host)
    theirs = peer.create_pool(host)

    assert isinstance(ours, SentinelConnectionPool)
    assert (ours.service_name, ours.is_master) == (theirs.service_name, theirs.is_master)
    for key in COMPARED:
        assert ours.connection_kwargs.get(key) == theirs.connection_kwargs.get(key), key

    def sentinel_view(pool: Any) -> list[tuple[str, int, str | None]]:
        return [
            (
                client.connection_pool.connection_kwargs["host"],
                client.connection_pool.connection_kwargs["port"],
                client.connection_pool.connection_kwargs.get("password"),
            )
            for client in pool.sentinel_manager.sentinels
        ]

    assert sentinel_view(ours) == sentinel_view(theirs)


@pytest.mark.parametrize(
    ("host", "error", "named"),
    [
        ("valkey://localhost:6379", TypeError, r"\{'address': url\}"),
        ({"sentinels": [("s", 26379)], "services": ["a", "b"]}, HostConfigError, "2 primaries"),
        ({"sentinels": [("s", 26379)], "services": []}, HostConfigError, "master_name"),
        ({"host": "localhost", "port": 0}, HostConfigError, "port 0 is out of range"),
    ],
)
def test_create_pool_refuses_what_makes_no_single_pool(host: Any, error: type[Exception], named: str) -> None:
    with pytest.raises(error, match=named):
        create_pool(host)


# Against real servers ------------------------------------------------------------------------------------------


def _client_names_now(server: ValkeyProcess) -> set[str]:
    with server.client() as client:
        return {entry["name"] for entry in client.client_list()}


async def _client_names(server: ValkeyProcess) -> set[str]:
    return await asyncio.to_thread(_client_names_now, server)


async def _use_and_close(server: ValkeyProcess, pool: avalkey.ConnectionPool, key_prefix: str) -> Any:
    """Write and read through a client on ``pool``, close it with ``_close_valkey``; what ACL WHOAMI said."""
    name = f"compat-{uuid.uuid4().hex[:8]}"
    client = avalkey.Valkey(connection_pool=pool)
    try:
        await client.client_setname(name)
        await client.set(f"{key_prefix}k", "v")
        assert await client.get(f"{key_prefix}k") == b"v"
        assert name in await _client_names(server)
        whoami = await client.acl_whoami()
    finally:
        await _close_valkey(client)
    await asyncio.to_thread(
        wait_until,
        lambda: name not in _client_names_now(server),
        timeout=5,
        message="the connection closed by _close_valkey to go away",
    )
    return whoami


@pytest.mark.parametrize("form", ["url", "pair", "dict"])
async def test_pools_from_decoded_hosts_reach_the_server(
    valkey_server: ValkeyProcess, key_prefix: str, form: str
) -> None:
    hosts: dict[str, list[Any]] = {
        "url": [valkey_server.url()],
        "pair": [(valkey_server.host, valkey_server.port)],
        "dict": [{"host": valkey_server.host, "port": valkey_server.port, "db": 0}],
    }
    (entry,) = decode_hosts(hosts[form])
    assert await _use_and_close(valkey_server, create_pool(entry), key_prefix) == "default"


async def test_pool_on_a_unix_socket(unix_valkey: ValkeyProcess, key_prefix: str) -> None:
    (entry,) = decode_hosts([f"unix://{unix_valkey.unix_socket}"])
    assert await _use_and_close(unix_valkey, create_pool(entry), key_prefix) == "default"


async def test_pool_logs_in_as_the_acl_user(secured_valkey: ValkeyProcess, key_prefix: str) -> None:
    user, password = ACL_USER
    entry = {"address": f"valkey://{user}:{password}@{secured_valkey.host}:{secured_valkey.port}/0"}
    assert await _use_and_close(secured_valkey, create_pool(entry), key_prefix) == user


async def test_sentinel_pool_reaches_the_primary(sentinel_group: SentinelGroup, key_prefix: str) -> None:
    (entry,) = decode_hosts([sentinel_group.host_entry()])
    pool = create_pool(entry)
    assert isinstance(pool, SentinelConnectionPool)
    try:
        primary = sentinel_group.current_primary()
        assert await _use_and_close(primary, pool, key_prefix) == "default"
    finally:
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


# Closing with the loop -----------------------------------------------------------------------------------------


class _RecordingLayer:
    """Stands in for a 0.3 per-loop layer: records each flush and whether its loop was still open."""

    def __init__(self) -> None:
        self.flushes: list[bool] = []

    async def flush(self) -> None:
        self.flushes.append(not asyncio.get_running_loop().is_closed())


class _Proxy:
    """Stands in for a 0.3 channel layer: its per-loop layers in ``_layers``."""

    def __init__(self) -> None:
        self._layers: dict[asyncio.AbstractEventLoop, _RecordingLayer] = {}


WrapClose = Callable[[Any, asyncio.AbstractEventLoop], None]
BOTH: list[Any] = [pytest.param(_wrap_close, id="ours"), pytest.param(peer._wrap_close, id="0.3")]


@pytest.mark.parametrize("wrap_close", BOTH)
def test_wrap_close_flushes_the_loops_layer_before_the_loop_closes(wrap_close: WrapClose) -> None:
    proxy, layer, other = _Proxy(), _RecordingLayer(), _RecordingLayer()
    loop, other_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    proxy._layers = {loop: layer, other_loop: other}
    wrap_close(proxy, loop)

    loop.close()

    assert loop.is_closed()
    assert layer.flushes == [True]
    assert proxy._layers == {other_loop: other}
    loop.close()  # a second close is the loop's own: no second flush
    assert layer.flushes == [True]
    other_loop.close()
    assert other.flushes == []


@pytest.mark.parametrize("wrap_close", BOTH)
def test_wrap_close_of_a_loop_without_a_layer_just_closes_it(wrap_close: WrapClose) -> None:
    proxy = _Proxy()
    loop = asyncio.new_event_loop()
    wrap_close(proxy, loop)

    loop.close()

    assert loop.is_closed()
    assert proxy._layers == {}


def test_wrap_close_keeps_connections_from_leaking_through_async_to_sync(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    """The use 0.3's layers made of it: a client per loop, closed when ``async_to_sync`` closes that loop."""
    from asgiref.sync import async_to_sync

    name = f"compat-{uuid.uuid4().hex[:8]}"

    class LoopLayer:
        def __init__(self) -> None:
            self.client = avalkey.Valkey(connection_pool=create_pool({"address": valkey_server.url()}))

        async def flush(self) -> None:
            await _close_valkey(self.client)

    class Proxy:
        def __init__(self) -> None:
            self._layers: dict[asyncio.AbstractEventLoop, LoopLayer] = {}

        async def write(self) -> None:
            loop = asyncio.get_running_loop()
            if loop not in self._layers:
                _wrap_close(self, loop)
                self._layers[loop] = LoopLayer()
            client = self._layers[loop].client
            await client.client_setname(name)
            await client.set(f"{key_prefix}k", "v")

    proxy = Proxy()
    async_to_sync(proxy.write)()

    assert proxy._layers == {}
    with valkey_server.client() as client:
        assert client.get(f"{key_prefix}k") == b"v"
    wait_until(
        lambda: name not in _client_names_now(valkey_server),
        timeout=5,
        message="the closed loop's connection to go away",
    )
