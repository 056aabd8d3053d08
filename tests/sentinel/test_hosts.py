"""Decoding of the ``hosts`` setting: each accepted form, each refused one, real connections from specs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import valkey.asyncio
from channels_redis.utils import create_pool as peer_create_pool
from valkey.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from valkey.asyncio.sentinel import Sentinel, SentinelManagedConnection

from channels_valkey.sentinel.decoding import decode_hosts
from channels_valkey.sentinel.discovery import discover_services
from channels_valkey.sentinel.exceptions import HostConfigError, SentinelDiscoveryError
from channels_valkey.sentinel.specs import ClusterHost, SentinelDiscovery, SentinelHost, ServerHost

from servers.process import ValkeyProcess, free_port
from servers.topologies import SENTINEL_PASSWORD, SentinelGroup, add_acl_user

SECRET = "s3cr3t-Pw"
ACCEPTED_HINT = "Each hosts entry is one of"


def tcp(host: str = "localhost", port: int = 6379, **options: Any) -> dict[str, Any]:
    return {"connection_class": Connection, "host": host, "port": port, **options}


# Accepted forms ---------------------------------------------------------------------------------------------

DEFAULT = [ServerHost(tcp())]


@pytest.mark.parametrize("hosts", [None, [], (), ""])
def test_no_hosts_means_localhost(hosts: object) -> None:
    assert decode_hosts(hosts) == DEFAULT


@pytest.mark.parametrize(
    ("entry", "options"),
    [
        ("valkey://cache.example:7000/3", tcp("cache.example", 7000, db=3)),
        ("valkey://cache.example", tcp("cache.example")),
        (
            "redis://app:pw@cache.example:7000/1",
            tcp("cache.example", 7000, db=1, username="app", password="pw"),
        ),
        ("valkey://:pw@cache.example", tcp("cache.example", password="pw")),
        ("valkey://cache.example?db=5&socket_timeout=2.5", tcp("cache.example", db=5, socket_timeout=2.5)),
        (
            "valkey://u%40corp:p%2Fw%3Ad%40@cache.example/0",
            tcp("cache.example", db=0, username="u@corp", password="p/w:d@"),
        ),
        ("valkey://[::1]:7000/0", tcp("::1", 7000, db=0)),
        ("valkeys://cache.example", {**tcp("cache.example"), "connection_class": SSLConnection}),
        (
            "rediss://:pw@cache.example:6380/2?ssl_cert_reqs=none",
            {
                **tcp("cache.example", 6380, db=2, password="pw", ssl_cert_reqs="none"),
                "connection_class": SSLConnection,
            },
        ),
        (
            "unix:///run/valkey.sock?db=2",
            {"connection_class": UnixDomainSocketConnection, "path": "/run/valkey.sock", "db": 2},
        ),
        (
            "unix:///run/valkey.sock",
            {"connection_class": UnixDomainSocketConnection, "path": "/run/valkey.sock"},
        ),
        (("cache.example", 7000), tcp("cache.example", 7000)),
        (["cache.example", 7000], tcp("cache.example", 7000)),
        (("cache.example", "7000"), tcp("cache.example", 7000)),
        (
            {"host": "cache.example", "port": 7000, "db": 1, "password": "pw", "socket_timeout": 2.5},
            tcp("cache.example", 7000, db=1, password="pw", socket_timeout=2.5),
        ),
        ({"host": "cache.example", "port": "7000", "db": "2"}, tcp("cache.example", 7000, db=2)),
        ({}, tcp()),
        ({"max_connections": 50}, tcp(max_connections=50)),
        ({"host": "cache.example", "ssl": True}, {**tcp("cache.example"), "connection_class": SSLConnection}),
        ({"host": "cache.example", "ssl": False}, tcp("cache.example")),
        (
            {"unix_socket_path": "/run/valkey.sock", "db": 1},
            {"connection_class": UnixDomainSocketConnection, "path": "/run/valkey.sock", "db": 1},
        ),
        (
            {"address": "rediss://cache.example:6380", "ssl_cert_reqs": None},
            {**tcp("cache.example", 6380, ssl_cert_reqs=None), "connection_class": SSLConnection},
        ),
        ({"address": "valkey://cache.example:7000", "db": 4}, tcp("cache.example", 7000, db=4)),
        (
            {"address": "valkey://cache.example", "password": "pw", "health_check_interval": 10},
            tcp("cache.example", password="pw", health_check_interval=10),
        ),
    ],
)
def test_server_forms(entry: object, options: dict[str, Any]) -> None:
    [spec] = decode_hosts([entry])
    assert isinstance(spec, ServerHost)
    assert dict(spec.options) == options


def test_the_address_url_wins_over_other_keys_as_in_the_peer() -> None:
    """channels_redis hands the keys to ``ConnectionPool.from_url``, where the URL's own values win."""
    entry = {"address": "redis://cache.example:7000/0", "db": 4, "port": 7001}
    peer = peer_create_pool(entry).connection_kwargs
    [spec] = decode_hosts([entry])
    assert (spec.options["host"], spec.options["port"], spec.options["db"]) == (
        peer["host"],
        peer["port"],
        peer["db"],
    )
    assert spec.options["db"] == 0


def test_sentinel_entry() -> None:
    entry = {
        "sentinels": [("s1", 26379), ["s2", "26380"], "valkey://s3", "redis://s4:26381"],
        "master_name": "mymaster",
        "sentinel_kwargs": {"password": "sentinel-pw", "socket_timeout": 1},
        "password": "primary-pw",
        "db": 2,
        "ssl": True,
        "ssl_cert_reqs": None,
    }
    assert decode_hosts([entry]) == [
        SentinelHost(
            sentinels=(("s1", 26379), ("s2", 26380), ("s3", 26379), ("s4", 26381)),
            service_name="mymaster",
            sentinel_options={"password": "sentinel-pw", "socket_timeout": 1},
            options={"password": "primary-pw", "db": 2, "ssl": True, "ssl_cert_reqs": None},
        )
    ]


def test_sentinel_entry_without_sentinel_kwargs() -> None:
    [spec] = decode_hosts([{"sentinels": [("s1", 26379)], "master_name": "m", "sentinel_kwargs": None}])
    assert spec == SentinelHost((("s1", 26379),), "m", {}, {})


def test_services_list_gives_one_shard_per_primary_in_order() -> None:
    entry = {
        "sentinels": [("s1", 26379)],
        "services": ["zeta", "alpha"],
        "sentinel_kwargs": {"password": "x"},
    }
    specs = decode_hosts([entry])
    assert [spec.service_name for spec in specs if isinstance(spec, SentinelHost)] == ["zeta", "alpha"]
    assert all(spec.sentinel_options == {"password": "x"} for spec in specs if isinstance(spec, SentinelHost))


def test_empty_services_means_every_monitored_primary() -> None:
    [spec] = decode_hosts([{"sentinels": [("s1", 26379)], "services": [], "db": 1}])
    assert spec == SentinelDiscovery((("s1", 26379),), {}, {"db": 1})


def test_plain_and_sentinel_entries_mix_in_order() -> None:
    specs = decode_hosts(
        [
            "valkey://one:6379",
            ("two", 6380),
            {"sentinels": [("s1", 26379)], "master_name": "three"},
            {"host": "four"},
            {"sentinels": [("s1", 26379)], "services": ["five", "six"]},
        ]
    )
    assert [spec.describe() for spec in specs] == [
        "valkey://one:6379/0",
        "valkey://two:6380/0",
        "primary 'three' of Sentinels s1:26379",
        "valkey://four:6379/0",
        "primary 'five' of Sentinels s1:26379",
        "primary 'six' of Sentinels s1:26379",
    ]


def test_any_ordered_iterable_of_entries_is_accepted() -> None:
    assert decode_hosts(iter(["valkey://a"])) == decode_hosts(("valkey://a",)) == [ServerHost(tcp("a"))]


def test_specs_are_frozen_copies() -> None:
    entry = {"host": "cache.example", "port": 7000}
    [spec] = decode_hosts([entry])
    entry["port"] = 1
    assert spec.options["port"] == 7000
    with pytest.raises(TypeError):
        spec.options["port"] = 1  # type: ignore[index]


# Descriptions never hold a password -------------------------------------------------------------------------

DESCRIBED = [
    (f"valkey://app:{SECRET}@cache.example:7000/3", "valkey://app:***@cache.example:7000/3"),
    (f"rediss://:{SECRET}@cache.example", "valkeys://:***@cache.example:6379/0"),
    (f"unix://:{SECRET}@/run/valkey.sock?db=1", "unix://:***@/run/valkey.sock?db=1"),
    ({"host": "::1", "password": SECRET}, "valkey://:***@[::1]:6379/0"),
    ({"host": "cache.example", "username": "app"}, "valkey://app@cache.example:6379/0"),
    (
        {
            "sentinels": [("s1", 26379), ("s2", 26380)],
            "master_name": "m",
            "password": SECRET,
            "username": "app",
            "sentinel_kwargs": {"password": SECRET},
            "db": 2,
            "ssl": True,
        },
        "primary 'm' of Sentinels s1:26379, s2:26380 (db 2, user app, TLS)",
    ),
    (
        {
            "sentinels": [("s1", 26379)],
            "services": [],
            "password": SECRET,
            "sentinel_kwargs": {"password": SECRET},
        },
        "every primary of Sentinels s1:26379",
    ),
]


@pytest.mark.parametrize(("entry", "described"), DESCRIBED)
def test_describe_masks_passwords(entry: object, described: str) -> None:
    [spec] = decode_hosts([entry])
    assert spec.describe() == described
    assert SECRET not in repr(spec)
    assert repr(spec) == f"{type(spec).__name__}({described!r})"


# Refused forms ----------------------------------------------------------------------------------------------

BAD_HOSTS = [
    pytest.param(f"valkey://:{SECRET}@h", "write hosts=['valkey://:***@h']", id="bare-string"),
    pytest.param(f"valkey://:{SECRET}@h".encode(), "even for one server", id="bare-bytes"),
    pytest.param({"host": "h", "password": SECRET}, "wrap the dict in a list", id="bare-dict"),
    pytest.param({f"valkey://:{SECRET}@h"}, "a set's order differs between processes", id="set"),
    pytest.param(frozenset({"valkey://h"}), "not a frozenset", id="frozenset"),
    pytest.param(6379, "hosts must be a list of entries, got 6379", id="int"),
    pytest.param(("h", 6379), "write hosts=[('h', 6379)]", id="bare-pair"),
]


@pytest.mark.parametrize(("hosts", "fragment"), BAD_HOSTS)
def test_bad_hosts_setting(hosts: object, fragment: str) -> None:
    with pytest.raises(HostConfigError) as caught:
        decode_hosts(hosts)
    message = str(caught.value)
    assert fragment in message
    assert SECRET not in message


SENTINELS = [("s1", 26379)]

BAD_ENTRIES = [
    # URLs
    pytest.param(f"ftp://:{SECRET}@h", "scheme 'ftp'", id="unknown-scheme"),
    pytest.param("h:6379", "the URL has no scheme", id="no-scheme"),
    pytest.param(f"valkey://:{SECRET}@h:99999", "check the port (1-65535)", id="port-out-of-range"),
    pytest.param(f"valkey://:{SECRET}@h:0", "port 0", id="port-zero"),
    pytest.param(f"valkey://:{SECRET}@h:port", "check the port", id="port-not-a-number"),
    pytest.param(f"valkey://:{SECRET[:3]}/{SECRET[3:]}@h:1/0", "percent-encode", id="slash-in-password"),
    pytest.param(
        f"valkey://:{SECRET[:3]}:{SECRET[3:]}@h:1/zero", "database number", id="db-path-not-a-number"
    ),
    pytest.param(f"valkey://:{SECRET}@h?db=x", "Invalid value for `db`", id="db-query-not-a-number"),
    pytest.param(f"valkey://:{SECRET}@h?dbb=1", "'dbb' (did you mean 'db'?)", id="unknown-query-option"),
    pytest.param("unix://", "needs the socket path", id="unix-without-path"),
    pytest.param(b"valkey://h", "a URL must be a str, not bytes", id="bytes-entry"),
    # Pairs
    pytest.param(("h",), "exactly two items, this one has 1", id="pair-too-short"),
    pytest.param(("h", 6379, 0), "exactly two items, this one has 3", id="pair-too-long"),
    pytest.param(("h", "port"), "the port must be an int, got 'port'", id="pair-port-string"),
    pytest.param(("h", 70000), "port 70000 is out of range 1-65535", id="pair-port-range"),
    pytest.param(("h", True), "the port must be an int, got True", id="pair-port-bool"),
    pytest.param(("", 6379), "the host must be a non-empty string", id="pair-empty-host"),
    pytest.param((None, 6379), "the host must be a non-empty string, got None", id="pair-host-none"),
    # Option dicts
    pytest.param({"host": "h", "prot": 1, "password": SECRET}, "'prot' (did you mean 'port'?)", id="typo"),
    pytest.param(
        {"host": "h", "port": "x", "password": SECRET}, "the port must be an int, got 'x'", id="port-str"
    ),
    pytest.param(
        {"host": "h", "db": -1, "password": SECRET}, "'db' must be a database number", id="db-negative"
    ),
    pytest.param({"host": "h", "db": "zero", "password": SECRET}, "got 'zero'", id="db-word"),
    pytest.param({"host": "h", "db": 1.0}, "got 1.0", id="db-float"),
    pytest.param(
        {"host": 5, "password": SECRET}, "the host must be a non-empty string, got 5", id="host-int"
    ),
    pytest.param({"host": "h", "password": 1234}, "'password' must be a string", id="password-int"),
    pytest.param({1: "h"}, "option names must be strings", id="non-str-key"),
    pytest.param(
        {"address": f"valkey://:{SECRET}@h", "ssl_cert_reqs": None},
        "TLS options need a TLS connection",
        id="tls-option-on-plain-url",
    ),
    pytest.param({"address": 5, "password": SECRET}, "'address' must be a URL string", id="address-int"),
    pytest.param(
        {"host": "h", "ssl": "yes", "password": SECRET}, "'ssl' must be True or False", id="ssl-str"
    ),
    pytest.param(
        {"host": "h", "ssl": True, "connection_class": Connection},
        "'ssl': True contradicts",
        id="ssl-class-clash",
    ),
    pytest.param({"connection_class": str, "password": SECRET}, "subclass of valkey.asyncio", id="bad-class"),
    pytest.param(
        {"unix_socket_path": "/x.sock", "ssl": True}, "cannot be combined with 'ssl'", id="unix-ssl"
    ),
    pytest.param({"unix_socket_path": "/x.sock", "host": "h"}, "unknown option 'host'", id="unix-host"),
    pytest.param({"path": "/x.sock"}, "unknown option 'path'", id="path-on-tcp"),
    # Sentinel dicts
    pytest.param({"sentinels": SENTINELS, "password": SECRET}, "exactly one of 'master_name'", id="no-name"),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "services": ["m"]},
        "exactly one of",
        id="name-and-services",
    ),
    pytest.param({"master_name": "m", "password": SECRET}, "needs 'sentinels'", id="no-sentinels"),
    pytest.param({"sentinels": [], "master_name": "m"}, "'sentinels' is empty", id="empty-sentinels"),
    pytest.param(
        {"sentinels": ("s1", 26379), "master_name": "m"}, "write [('s1', 26379)]", id="sentinels-pair"
    ),
    pytest.param(
        {"sentinels": "s1:26379", "master_name": "m"}, "must be a list of (host, port)", id="sentinels-str"
    ),
    pytest.param(
        {"sentinels": [("s1", 0)], "master_name": "m"}, "port 0 is out of range", id="sentinel-port"
    ),
    pytest.param(
        {"sentinels": ["s1"], "master_name": "m"}, "each Sentinel is a (host, port) pair", id="sentinel-word"
    ),
    pytest.param(
        {"sentinels": [f"valkey://:{SECRET}@s1"], "master_name": "m"},
        "credentials and TLS options go in 'sentinel_kwargs'",
        id="sentinel-url-credentials",
    ),
    pytest.param(
        {"sentinels": ["valkeys://s1"], "master_name": "m"}, "'valkey://host[:port]'", id="sentinel-tls"
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": ""}, "'master_name' must be a non-empty", id="empty-name"
    ),
    pytest.param({"sentinels": SENTINELS, "master_name": 5}, "got 5", id="name-int"),
    pytest.param({"sentinels": SENTINELS, "services": "m"}, "'services' must be a list", id="services-str"),
    pytest.param(
        {"sentinels": SENTINELS, "services": {"a", "b"}}, "'services' must be a list", id="services-set"
    ),
    pytest.param(
        {"sentinels": SENTINELS, "services": ["a", None]}, "each name in 'services'", id="services-none"
    ),
    pytest.param(
        {"sentinels": SENTINELS, "services": ["a", "a"]}, "'a' more than once", id="services-repeated"
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "host": "h", "password": SECRET},
        "takes no 'host'",
        id="sentinel-with-host",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "address": f"valkey://:{SECRET}@h"},
        "takes no 'address'",
        id="sentinel-with-address",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "sentinel_kwargs": {"pasword": SECRET}},
        "unknown option 'pasword' in 'sentinel_kwargs'",
        id="sentinel-kwargs-typo",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "sentinel_kwargs": f"password={SECRET}"},
        "'sentinel_kwargs' must be a dict",
        id="sentinel-kwargs-str",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "connection_class": Connection},
        "subclass of valkey.asyncio.sentinel.SentinelManagedConnection",
        id="sentinel-plain-class",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "ssl_cert_reqs": None, "password": SECRET},
        "TLS options need a TLS connection",
        id="sentinel-tls-option-without-ssl",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "sokcet_timeout": 1},
        "did you mean 'socket_timeout'",
        id="sentinel-option-typo",
    ),
    pytest.param(
        {"sentinels": SENTINELS, "master_name": "m", "ssl": 1}, "'ssl' must be True or False", id="ssl-int"
    ),
    # Cluster entries
    pytest.param(
        {"cluster": "valkey://h:7000"}, "'cluster' must be a list of startup nodes", id="cluster-str"
    ),
    pytest.param({"cluster": [], "password": SECRET}, "'cluster' is empty", id="cluster-empty"),
    pytest.param({"cluster": ("h", 7000)}, "write [('h', 7000)]", id="cluster-pair"),
    pytest.param({"cluster": ["valkey://h:7000/2"]}, "only database 0, got db 2", id="cluster-db-url"),
    pytest.param({"cluster": [("h", 7000)], "db": 1}, "only database 0, got db 1", id="cluster-db-key"),
    pytest.param(
        {"cluster": [f"valkey://:{SECRET}@h:7000", "valkey://h:7001"]},
        "the node URLs differ",
        id="cluster-urls-disagree",
    ),
    pytest.param(
        {"cluster": ["unix:///x.sock"]}, "a unix socket cannot be a cluster node", id="cluster-unix"
    ),
    pytest.param(
        {"cluster": [("h", 7000)], "unix_socket_path": "/x.sock"},
        "takes no 'unix_socket_path'",
        id="cluster-path",
    ),
    pytest.param({"cluster": [("h", 7000)], "host": "h"}, "takes no 'host'", id="cluster-host"),
    pytest.param(
        {"cluster": [("h", 7000)], "sentinels": SENTINELS},
        "cannot be a Sentinel entry",
        id="cluster-sentinel",
    ),
    pytest.param({"cluster": [("h", 0)]}, "port 0 is out of range", id="cluster-port"),
    pytest.param({"cluster": ["h:7000"]}, "has no scheme", id="cluster-bare-word"),
    pytest.param({"cluster": [5]}, "each cluster node is a URL", id="cluster-int-node"),
    pytest.param({"cluster": [("h", 1), ("h", 1)]}, "lists a node more than once", id="cluster-repeated"),
    pytest.param(
        {"cluster": [("h", 7000)], "pasword": SECRET}, "did you mean 'password'", id="cluster-option-typo"
    ),
    # Anything else
    pytest.param(5, "an entry cannot be a int", id="int-entry"),
    pytest.param(None, "an entry cannot be a NoneType", id="none-entry"),
]


@pytest.mark.parametrize(("entry", "fragment"), BAD_ENTRIES)
def test_bad_entry_is_named_with_its_index_and_the_accepted_forms(entry: object, fragment: str) -> None:
    with pytest.raises(HostConfigError) as caught:
        decode_hosts(["valkey://fine:6379", entry])
    message = str(caught.value)
    assert message.startswith("hosts[1] = ")
    assert fragment in message
    assert ACCEPTED_HINT in message
    assert SECRET not in message
    assert SECRET[3:] not in message


def test_cluster_entry_gathers_nodes_and_options() -> None:
    (spec,) = decode_hosts(
        [{"cluster": [f"valkeys://:{SECRET}@n1:7000", f"valkeys://:{SECRET}@n2:7001", ("n3", "7002")]}]
    )
    assert isinstance(spec, ClusterHost)
    assert spec.startup_nodes == (("n1", 7000), ("n2", 7001), ("n3", 7002))
    assert spec.options["password"] == SECRET
    assert spec.options["connection_class"] is SSLConnection
    assert "host" not in spec.options
    assert "db" not in spec.options
    assert spec.node("n9", 7009).options["host"] == "n9"
    assert SECRET not in repr(spec)
    assert repr(spec) == "ClusterHost('cluster of n1:7000, n2:7001, n3:7002 (TLS)')"


def test_cluster_entry_options_as_keys() -> None:
    (spec,) = decode_hosts([{"cluster": [("n1", 7000)], "username": "app", "password": SECRET, "ssl": True}])
    assert isinstance(spec, ClusterHost)
    assert spec.options["username"] == "app"
    assert spec.options["connection_class"] is SSLConnection


def test_cluster_entry_must_be_the_only_entry() -> None:
    with pytest.raises(HostConfigError, match="must be the only entry of hosts"):
        decode_hosts([{"cluster": [("n1", 7000)]}, "valkey://other:6379"])


def test_host_config_error_is_a_value_error() -> None:
    assert issubclass(HostConfigError, ValueError)


# Real connections -------------------------------------------------------------------------------------------


async def ping(options: Mapping[str, Any]) -> bool:
    pool = valkey.asyncio.ConnectionPool(**options)
    client = valkey.asyncio.Valkey(connection_pool=pool)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()
        await pool.disconnect()


def server_forms(server: ValkeyProcess) -> list[object]:
    host, port = server.address
    return [
        server.url(),
        f"redis://{host}:{port}",
        (host, port),
        [host, str(port)],
        {"host": host, "port": port, "socket_timeout": 5},
        {"address": f"valkey://{host}:{port}/0", "socket_connect_timeout": 5},
    ]


async def test_decoded_forms_connect(valkey_server: ValkeyProcess) -> None:
    for entry in server_forms(valkey_server):
        [spec] = decode_hosts([entry])
        assert isinstance(spec, ServerHost)
        assert await ping(spec.options), entry


async def test_decoded_db_is_the_one_written_to(valkey_server: ValkeyProcess, key_prefix: str) -> None:
    key = f"{key_prefix}db-check"
    for entry in [
        valkey_server.url(db=3),
        {"host": valkey_server.host, "port": valkey_server.port, "db": "3"},
    ]:
        [spec] = decode_hosts([entry])
        client = valkey.asyncio.Valkey.from_pool(valkey.asyncio.ConnectionPool(**spec.options))
        try:
            await client.set(key, "here", ex=60)
        finally:
            await client.aclose()
        with valkey_server.client(db=3) as db3, valkey_server.client(db=0) as db0:
            assert db3.getdel(key) == b"here"
            assert db0.get(key) is None


async def test_url_credentials_are_decoded(secured_valkey: ValkeyProcess, key_prefix: str) -> None:
    username, password = f"{key_prefix}user", "p@ss:w/rd %"
    add_acl_user(secured_valkey, username, password, ["+ping"])
    host, port = secured_valkey.address
    entries = [
        f"valkey://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}/0",
        {"host": host, "port": port, "username": username, "password": password},
        {"address": f"redis://{host}:{port}", "username": username, "password": password},
    ]
    for entry in entries:
        [spec] = decode_hosts([entry])
        assert (spec.options["username"], spec.options["password"]) == (username, password)
        assert await ping(spec.options)
    [anonymous] = decode_hosts([(host, port)])
    with pytest.raises(valkey.exceptions.AuthenticationError):
        await ping(anonymous.options)


async def test_unix_socket_forms_connect(unix_valkey: ValkeyProcess) -> None:
    path = unix_valkey.unix_socket
    assert path is not None
    for entry in [f"unix://{path}?db=0", {"unix_socket_path": path}, {"address": f"unix://{path}"}]:
        [spec] = decode_hosts([entry])
        assert spec.options["connection_class"] is UnixDomainSocketConnection
        assert await ping(spec.options)


async def test_sentinel_spec_reaches_the_primary(sentinel_group: SentinelGroup) -> None:
    [spec] = decode_hosts([sentinel_group.host_entry(socket_timeout=5)])
    assert isinstance(spec, SentinelHost)
    assert spec.service_name == sentinel_group.service_name
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=dict(spec.sentinel_options))
    primary = sentinel.master_for(spec.service_name, **spec.options)
    try:
        info = await primary.info("replication")
        assert info["role"] == "master"
        assert primary.connection_pool.connection_class is SentinelManagedConnection
    finally:
        await primary.aclose()
        for client in sentinel.sentinels:
            await client.aclose()


# Discovery --------------------------------------------------------------------------------------------------


@pytest.fixture
def start_sentinel(tmp_path: Path) -> Iterator[Callable[..., ValkeyProcess]]:
    """Start a Sentinel of this test's own that monitors the given ``{name: server}`` primaries."""
    started: list[ValkeyProcess] = []

    def start(monitors: Mapping[str, ValkeyProcess]) -> ValkeyProcess:
        lines = [f"monitor {name} {server.host} {server.port} 1" for name, server in monitors.items()]
        process = ValkeyProcess(tmp_path, f"sentinel{len(started)}", {"sentinel": lines}, sentinel=True)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def discovery(sentinels: list[Any], **entry: Any) -> SentinelDiscovery:
    [spec] = decode_hosts([{"sentinels": sentinels, "services": [], **entry}])
    assert isinstance(spec, SentinelDiscovery)
    return spec


async def test_discovery_finds_the_monitored_primary(sentinel_group: SentinelGroup) -> None:
    spec = discovery(sentinel_group.sentinel_addresses, sentinel_kwargs=sentinel_group.sentinel_kwargs, db=1)
    assert await discover_services(spec) == [
        SentinelHost(
            tuple(sentinel_group.sentinel_addresses),
            sentinel_group.service_name,
            sentinel_group.sentinel_kwargs,
            {"db": 1},
        )
    ]


async def test_discovery_sorts_primaries_by_name(
    start_sentinel: Callable[..., ValkeyProcess], server_factory: Callable[..., ValkeyProcess]
) -> None:
    sentinel = start_sentinel(
        {"zeta": server_factory("zeta"), "alpha": server_factory("alpha"), "mid": server_factory("mid")}
    )
    found = await discover_services(discovery([sentinel.address]))
    assert [spec.service_name for spec in found] == ["alpha", "mid", "zeta"]


async def test_discovery_skips_a_sentinel_that_does_not_answer(
    start_sentinel: Callable[..., ValkeyProcess], valkey_server: ValkeyProcess
) -> None:
    sentinel = start_sentinel({"only": valkey_server})
    nobody = ("127.0.0.1", free_port())
    found = await discover_services(discovery([nobody, sentinel.address]))
    assert [spec.service_name for spec in found] == ["only"]
    assert found[0].sentinels == (nobody, sentinel.address)


async def test_discovery_fails_clearly_when_no_sentinel_answers() -> None:
    addresses = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    with pytest.raises(SentinelDiscoveryError) as caught:
        await discover_services(discovery(addresses), timeout=2)
    message = str(caught.value)
    for host, port in addresses:
        assert f"{host}:{port}: ConnectionError" in message
    assert isinstance(caught.value, valkey.exceptions.ConnectionError)


async def test_discovery_with_a_wrong_sentinel_password(sentinel_group: SentinelGroup) -> None:
    spec = discovery(sentinel_group.sentinel_addresses[:1], sentinel_kwargs={"password": SECRET})
    with pytest.raises(SentinelDiscoveryError, match="AuthenticationError") as caught:
        await discover_services(spec)
    assert SECRET not in str(caught.value)
    assert SENTINEL_PASSWORD not in str(caught.value)


async def test_discovery_fails_clearly_when_nothing_is_monitored(
    start_sentinel: Callable[..., ValkeyProcess],
) -> None:
    idle = start_sentinel({})
    with pytest.raises(
        SentinelDiscoveryError, match=re.escape(f"{idle.host}:{idle.port}: monitors no primary")
    ):
        await discover_services(discovery([idle.address]))


@pytest.mark.parametrize("timeout", [0, -1, True, "5"])
async def test_discovery_timeout_must_be_positive(timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        await discover_services(discovery(SENTINELS), timeout=timeout)  # type: ignore[arg-type]
