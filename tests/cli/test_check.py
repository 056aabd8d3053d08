"""``channels-valkey check`` against real servers: healthy set-ups pass, each kind of problem is named, and the exit
status says whether the layer can work (0), cannot (1), or the options are wrong (2)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from channels_valkey.cli.commands.check import judge_eviction, judge_server
from channels_valkey.cli.probes import probe_args
from channels_valkey.cli.requirements import CORE_NEEDS, PUBSUB_NEEDS, commands_of, needs_of
from channels_valkey.core import scripts as core_scripts
from channels_valkey.pubsub import scripts as pubsub_scripts

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess, free_port
from servers.tls_proxy import TLSProxy
from servers.topologies import SENTINEL_PASSWORD, SentinelGroup, Shards, add_acl_user

RunCli = Callable[..., Any]
PACKAGES = Path(__file__).resolve().parents[2] / "packages"
README = {
    "core": PACKAGES / "channels-valkey-core" / "README.md",
    "pubsub": PACKAGES / "channels-valkey-pubsub" / "README.md",
}
#: Every command the core layer sends, in ACL SETUSER spelling (the table's ``CLIENT ID`` is ``client|id``).
CORE_COMMANDS = sorted(command.lower().replace(" ", "|") for command in commands_of("core"))


def _user_url(server: ValkeyProcess, user: str, password: str) -> str:
    host, port = server.address
    return f"valkey://{user}:{password}@{host}:{port}/0"


def _legacy_commands(layer: str) -> list[str]:
    """The commands channels-valkey 0.3 documented for ``layer``, as the layer's README quotes them."""
    text = README[layer].read_text()
    match = re.search(r"restricted\s+to\s+what\s+channels-valkey\s+0\.3\s+documented\s+\(`([A-Z\s]+)`", text)
    assert match, f"{README[layer]} no longer quotes 0.3's command list"
    return match.group(1).split()


# Healthy set-ups --------------------------------------------------------------------------------------------


def test_a_healthy_server_passes(run_cli: RunCli, valkey_url: str, key_prefix: str) -> None:
    result = run_cli("check", "--hosts", valkey_url, "--prefix", key_prefix)
    assert result.status == 0, result.stdout
    header, _, table, rule, row, *_ = result.stdout.splitlines()
    assert header == f"core layer, prefix {key_prefix!r} (--hosts)"
    assert table.split() == [
        "shard",
        "host",
        "reachable",
        "latency",
        "server",
        "role",
        "maxmemory-policy",
        "ACL",
    ]
    assert set(rule) <= {"-", " "}
    cells = row.split()
    assert cells[:3] == ["0", valkey_url, "yes"]
    assert cells[4:6] == ["ms", "valkey"]
    assert cells[-3:] == ["primary", "noeviction", "ok"]
    assert "1 shard checked: no problems found (exit status 0)" in result.stdout

    document = run_cli("check", "--hosts", valkey_url, "--prefix", key_prefix, "--json").json()
    assert document["status"] == 0
    assert document["findings"] == []
    (shard,) = document["shards"]
    assert shard["reachable"] is True
    assert shard["server"] == "valkey"
    assert tuple(int(part) for part in shard["version"].split(".")[:2]) >= (7, 2)
    assert shard["role"] == "primary"
    assert shard["latency_ms"] > 0
    assert shard["maxmemory_policy"] == "noeviction"
    # The default user may run ACL DRYRUN, so nothing had to be run for real.
    assert shard["acl"]["method"] == "dryrun"
    assert shard["acl"]["status"] == "ok"
    assert {need["level"] for need in shard["acl"]["needs"]} == {"ok"}


def test_three_shards_are_checked_each(run_cli: RunCli, valkey_shards: Shards) -> None:
    document = run_cli("check", "--hosts", *valkey_shards.urls(), "--json").json()
    assert document["status"] == 0
    assert [shard["index"] for shard in document["shards"]] == [0, 1, 2]
    assert [shard["host"] for shard in document["shards"]] == valkey_shards.urls()
    assert all(shard["reachable"] and shard["acl"]["status"] == "ok" for shard in document["shards"])


def test_a_sentinel_shard_shows_the_primary_the_sentinels_name(
    run_cli: RunCli, sentinel_group: SentinelGroup
) -> None:
    primary = sentinel_group.current_primary()
    entry = json.dumps(sentinel_group.host_entry())
    result = run_cli("check", "--hosts", entry)
    assert result.status == 0, result.stdout
    assert f"primary (Sentinel 'mymaster': {primary.host}:{primary.port})" in result.stdout

    (shard,) = run_cli("check", "--hosts", entry, "--json").json()["shards"]
    assert shard["sentinel"] == {"service": "mymaster", "primary": f"{primary.host}:{primary.port}"}
    assert shard["role"] == "primary"

    # "services": []: every primary the Sentinels monitor is a shard.
    discovery = {key: value for key, value in sentinel_group.host_entry().items() if key != "master_name"}
    document = run_cli("check", "--hosts", json.dumps({**discovery, "services": []}), "--json").json()
    assert [shard["sentinel"]["service"] for shard in document["shards"]] == ["mymaster"]
    assert document["status"] == 0


def test_a_sentinel_given_as_a_plain_host_is_an_error(run_cli: RunCli, sentinel_group: SentinelGroup) -> None:
    host, port = sentinel_group.sentinels[0].address
    result = run_cli("check", "--hosts", f"valkey://:{SENTINEL_PASSWORD}@{host}:{port}")
    assert result.status == 1
    assert "this is a Sentinel, not a data server: list Sentinels in a Sentinel entry" in result.stdout


def test_unix_socket_and_tls_hosts(run_cli: RunCli, unix_valkey: ValkeyProcess, tls_valkey: TLSProxy) -> None:
    assert unix_valkey.unix_socket is not None
    unix = f"unix://{unix_valkey.unix_socket}?db=1"
    tls = json.dumps({"address": tls_valkey.url(), "ssl_ca_certs": str(tls_valkey.ca_file)})
    document = run_cli("check", "--hosts", unix, tls, "--json").json()
    assert document["status"] == 0, document["findings"]
    assert [shard["reachable"] for shard in document["shards"]] == [True, True]
    assert document["shards"][1]["host"].startswith("valkeys://")


# The ACL ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("may_dry_run", [False, True], ids=["probing", "acl-dryrun"])
def test_a_user_missing_a_command_the_layer_needs_fails(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str, may_dry_run: bool
) -> None:
    user = f"no-zrem-{may_dry_run}".lower()
    allowed = [command for command in CORE_COMMANDS if command != "zrem"]
    extra = ["acl|whoami", "acl|dryrun"] if may_dry_run else []
    add_acl_user(secured_valkey, user, "pw", [f"~{key_prefix}*", *(f"+{c}" for c in [*allowed, *extra])])
    url = _user_url(secured_valkey, user, "pw")

    result = run_cli("check", "--hosts", url, "--prefix", key_prefix)
    assert result.status == 1
    assert "missing: ZREM" in result.stdout
    assert "error: shard 0 (valkey://" in result.stdout
    assert "group_discard: the ACL refuses ZREM, so the layer cannot do this" in result.stdout

    document = run_cli("check", "--hosts", url, "--prefix", key_prefix, "--json").json()
    (shard,) = document["shards"]
    assert shard["acl"]["method"] == ("dryrun" if may_dry_run else "probe")
    refused = [need for need in shard["acl"]["needs"] if need["level"] != "ok"]
    # Receipt pops strike what they put back from the receipt with ZREM too: without it receives use BZMPOP.
    assert [(need["use"], need["refused"]) for need in refused] == [
        ("receive (pops that survive a cut connection)", ["ZREM"]),
        ("group_discard", ["ZREM"]),
    ]
    # The probes changed nothing: no key of the prefix exists.
    with secured_valkey.client() as admin:
        assert list(admin.scan_iter(match=f"{key_prefix}*")) == []


def test_a_user_without_access_to_the_prefix_is_told_which_key(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    add_acl_user(secured_valkey, "other-keys", "pw", ["~someone-else:*", *(f"+{c}" for c in CORE_COMMANDS)])
    result = run_cli(
        "check", "--hosts", _user_url(secured_valkey, "other-keys", "pw"), "--prefix", key_prefix
    )
    assert result.status == 1
    assert f"ZADD on key '{key_prefix}__check__" in result.stdout


def test_a_core_user_with_only_the_commands_of_0_3_is_degraded(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    legacy = _legacy_commands("core")
    add_acl_user(secured_valkey, "legacy-core", "pw", [f"~{key_prefix}*", *(f"+{c.lower()}" for c in legacy)])
    url = _user_url(secured_valkey, "legacy-core", "pw")

    result = run_cli("check", "--hosts", url, "--prefix", key_prefix)
    assert result.status == 0, result.stdout
    assert re.search(r"\bdegraded\s*$", result.stdout.splitlines()[4])
    for fallback in (
        "uses EVAL instead of EVALSHA (the ACL refuses EVALSHA)",
        "receive: degraded, uses BZPOPMIN + ZPOPMIN instead of BZMPOP (the ACL refuses BZMPOP)",
        "uses KEYS instead of SCAN (the ACL refuses SCAN)",
    ):
        assert fallback in result.stdout
    # Receipt pops need HELLO and CLIENT TRACKING (and PEXPIRE, ZREMRANGEBYRANK), beyond 0.3's list: receives use
    # BZMPOP's fallback, as 0.3 did, which a cut connection can rob of a pop.
    assert "receive (pops that survive a cut connection): the ACL refuses" in result.stdout
    assert "note: shard 0" in result.stdout  # CLIENT and PING refused: worth knowing, not a warning
    assert "4 warnings" in result.stdout

    assert run_cli("check", "--hosts", url, "--prefix", key_prefix, "--strict").status == 1


def test_a_pubsub_user_with_only_the_commands_of_0_3_is_degraded(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    legacy = _legacy_commands("pubsub")
    add_acl_user(
        secured_valkey, "legacy-pubsub", "pw", [f"&{key_prefix}*", *(f"+{c.lower()}" for c in legacy)]
    )
    url = _user_url(secured_valkey, "legacy-pubsub", "pw")

    result = run_cli("check", "--hosts", url, "--layer", "pubsub", "--prefix", key_prefix)
    assert result.status == 0, result.stdout
    assert "worker channels fall back to Pub/Sub: every receiving process gets each message" in result.stdout
    # Channels outside the prefix are refused too (0.3 users were told to allow their prefix only).
    assert "receive on worker channels named outside the prefix: the ACL refuses SUBSCRIBE on channel" in (
        result.stdout
    )
    document = run_cli("check", "--hosts", url, "--layer", "pubsub", "--prefix", key_prefix, "--json").json()
    levels = {need["use"]: need["level"] for need in document["shards"][0]["acl"]["needs"]}
    assert levels["send to process channels, group_send"] == "ok"
    assert levels["new_channel, receive, group_add, group_discard"] == "ok"
    assert levels["worker channels on queues (send and receive)"] == "warning"
    assert document["shards"][0]["acl"]["status"] == "degraded"


def test_the_worker_queue_commands_are_not_asked_for_when_the_layer_uses_pubsub_for_them(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str, settings_module: Callable[..., str]
) -> None:
    add_acl_user(
        secured_valkey, "pubsub-only", "pw", ["&*", "+publish", "+subscribe", "+unsubscribe", "+ping"]
    )
    config = {
        "hosts": [_user_url(secured_valkey, "pubsub-only", "pw")],
        "prefix": key_prefix,
        "worker_channels": "pubsub",
    }
    module = settings_module(
        {"default": {"BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer", "CONFIG": config}}
    )
    result = run_cli("check", "--settings", module, "--strict")
    assert result.status == 0, result.stdout
    assert "worker channels" not in result.stdout


# Server configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_maxmemory_policy_is_a_warning(
    run_cli: RunCli, server_factory: Callable[..., ValkeyProcess], policy: str
) -> None:
    server = server_factory(maxmemory_policy=policy)
    result = run_cli("check", "--hosts", server.url())
    assert result.status == 0, result.stdout
    assert f"warning: shard 0 ({server.url()}): maxmemory-policy {policy} evicts" in result.stdout
    assert "queued messages and group memberships can vanish" in result.stdout
    assert run_cli("check", "--hosts", server.url(), "--strict").status == 1


def test_a_replica_is_an_error_for_a_layer_that_writes(
    run_cli: RunCli, sentinel_group: SentinelGroup, settings_module: Callable[..., str]
) -> None:
    primary = sentinel_group.current_primary()
    replica = next(node for node in sentinel_group.nodes if node is not primary)
    result = run_cli("check", "--hosts", replica.url())
    assert result.status == 1
    assert "replica" in result.stdout
    assert "the server is a replica: it refuses the layer's writes" in result.stdout

    # The Pub/Sub layer without worker queues writes no keys: a warning only.
    config = {"hosts": [replica.url()], "worker_channels": "pubsub"}
    module = settings_module(
        {"default": {"BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer", "CONFIG": config}}
    )
    result = run_cli("check", "--settings", module)
    assert result.status == 0, result.stdout
    assert "warning: shard 0" in result.stdout
    assert "only among processes connected to it" in result.stdout


# Unreachable servers ------------------------------------------------------------------------------------------


def test_an_unreachable_host_is_an_error_of_its_shard(run_cli: RunCli, valkey_url: str) -> None:
    closed = f"valkey://127.0.0.1:{free_port()}/0"
    result = run_cli("check", "--hosts", valkey_url, closed)
    assert result.status == 1
    assert f"error: shard 1 ({closed}): unreachable: ConnectionError" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[4].split()[2] == "yes"
    assert lines[5].split()[2] == "no"


def test_a_failed_connection_is_not_retried(run_cli: RunCli, fault_proxy: FaultProxy) -> None:
    # "Nothing is retried, so a failure is reported at once": the server is tried once.
    fault_proxy.refuse()  # every connection is reset as soon as it is made
    result = run_cli("check", "--hosts", fault_proxy.url())
    assert result.status == 1
    assert "unreachable: ConnectionError" in result.stdout
    assert fault_proxy.accepted_connections == 1


def test_sentinels_that_cannot_be_reached_are_an_error(run_cli: RunCli) -> None:
    nowhere = json.dumps({"sentinels": [["127.0.0.1", free_port()]], "master_name": "mymaster"})
    discovery = json.dumps({"sentinels": [["127.0.0.1", free_port()]], "services": []})
    document = run_cli("check", "--hosts", nowhere, discovery, "--json").json()
    assert document["status"] == 1
    messages = [finding["message"] for finding in document["findings"]]
    assert messages[0].startswith("unreachable: MasterNotFoundError")
    assert messages[1].startswith("unreachable: no Sentinel named a primary")


def test_a_server_that_never_answers_is_given_up_after_the_timeout(
    run_cli: RunCli, fault_proxy: FaultProxy
) -> None:
    fault_proxy.pause()
    try:
        result = run_cli("check", "--hosts", fault_proxy.url(), "--timeout", "0.5")
    finally:
        fault_proxy.resume()
    assert result.status == 1
    # The reply's own timeout gave up, not the bound on the shard's whole check (ten times --timeout), and the
    # server was tried once.
    assert "unreachable: TimeoutError" in result.stdout
    assert "did not finish" not in result.stdout
    assert fault_proxy.accepted_connections == 1


def test_a_wrong_password_is_a_refused_login(run_cli: RunCli, secured_valkey: ValkeyProcess) -> None:
    result = run_cli("check", "--hosts", _user_url(secured_valkey, "default", "wrong"))
    assert result.status == 1
    assert "login refused" in result.stdout
    assert "the server refused the login" in result.stdout


# Settings modules -------------------------------------------------------------------------------------------


def test_settings_module(
    run_cli: RunCli, valkey_url: str, key_prefix: str, settings_module: Callable[..., str]
) -> None:
    module = settings_module(
        {
            "default": {
                "BACKEND": "channels_valkey.core.ValkeyChannelLayer",
                "CONFIG": {"hosts": [valkey_url], "prefix": key_prefix, "capacity": 50},
            },
            "live": {
                "BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
                "CONFIG": {"hosts": [valkey_url]},
            },
        }
    )
    result = run_cli("check", "--settings", module)
    assert result.status == 0, result.stdout
    assert result.stdout.startswith(
        f"core layer, prefix {key_prefix!r} (settings {module}, CHANNEL_LAYERS['default'])"
    )

    document = run_cli("check", "--settings", module, "--alias", "live", "--json").json()
    assert (document["layer"], document["prefix"], document["status"]) == ("pubsub", "asgi", 0)

    result = run_cli("check", "--settings", module, "--alias", "nope")
    assert result.status == 2
    assert "has no entry 'nope' (entries: 'default', 'live')" in result.stderr


def test_settings_from_the_environment(
    run_cli: RunCli, valkey_url: str, settings_module: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = settings_module(
        {"default": {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"hosts": [valkey_url]}}}
    )
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", module)
    result = run_cli("check")
    assert result.status == 0, result.stdout
    assert f"(settings {module}, CHANNEL_LAYERS['default'])" in result.stdout


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}, "is not a channels-valkey layer"),
        ({"default": {"BACKEND": "nowhere.Layer"}}, "cannot be imported"),
        (
            {"default": {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"capacity": 0}}},
            "capacity must be a whole number >= 1, not 0",
        ),
        (
            {
                "default": {
                    "BACKEND": "channels_valkey.core.ValkeyChannelLayer",
                    "CONFIG": {"hosts": ["localhost"]},
                }
            },
            "hosts[0] = 'localhost'",
        ),
        ({}, "has no entry 'default' (entries: none)"),
        (
            {
                "default": {
                    "BACKEND": "channels_valkey.core.ValkeyChannelLayer",
                    "CONFIG": {"serializer_format": "yaml"},
                }
            },
            "yaml",
        ),
    ],
)
def test_bad_settings_exit_with_2(
    run_cli: RunCli, settings_module: Callable[..., str], layers: dict[str, Any], message: str
) -> None:
    result = run_cli("check", "--settings", settings_module(layers))
    assert result.status == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_settings_module_that_cannot_be_imported(
    run_cli: RunCli, settings_module: Callable[..., str]
) -> None:
    result = run_cli("check", "--settings", settings_module(source="raise RuntimeError('no database')\n"))
    assert result.status == 2
    assert "RuntimeError: no database" in result.stderr
    result = run_cli("check", "--settings", "no_such_settings_module_here")
    assert result.status == 2
    assert "cannot import the settings module 'no_such_settings_module_here'" in result.stderr


# Bad options --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hosts", "localhost:6379"], "hosts[0] = 'localhost:6379'"),
        (["--hosts", "valkey://127.0.0.1:99999"], "hosts[0] = 'valkey://127.0.0.1:99999'"),
        (["--hosts", '{"sentinels": [}'], "--hosts entry 0 starts with '{' but is not valid JSON"),
        (["--hosts", '{"sentinels": [["127.0.0.1", 26379]]}'], "exactly one of 'master_name'"),
        (["--hosts", "valkey://localhost", "--alias", "x"], "--alias picks a CHANNEL_LAYERS entry"),
        (
            ["--settings", "x", "--hosts", "valkey://localhost"],
            "give one of --settings, --hosts or --cluster",
        ),
        (["--settings", "x", "--layer", "pubsub"], "--layer goes with --hosts"),
        (
            ["--cluster", "valkey://127.0.0.1:7000", "--hosts", "valkey://localhost"],
            "not --hosts and --cluster",
        ),
        (["--cluster", "valkey://127.0.0.1:7000", "--alias", "x"], "goes with --settings, not --cluster"),
        (["--cluster", '{"cluster": ["valkey://127.0.0.1:7000"]}'], "--cluster node 0 is not a URL"),
        (["--cluster", "127.0.0.1:7000"], "the URL has no scheme"),
        (["--cluster", "unix:///tmp/valkey.sock"], "a unix socket cannot be a cluster node"),
        (["--cluster", "valkey://127.0.0.1:7000/2"], "a Valkey Cluster has only database 0"),
        (["--cluster", "valkey://127.0.0.1:7000", "valkey://127.0.0.1:7000"], "lists a node more than once"),
        ([], "say which layer to look at"),
    ],
)
def test_bad_options_exit_with_2(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    result = run_cli("check", *argv)
    assert result.status == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--hosts", "valkey://user:hunter2@127.0.0.1:0"],
        ["--cluster", "valkey://user:hunter2@127.0.0.1:0"],
        ["--cluster", '{"password": "hunter2"}'],
    ],
)
def test_passwords_in_a_bad_hosts_value_are_masked(run_cli: RunCli, argv: list[str]) -> None:
    result = run_cli("check", *argv)
    assert result.status == 2
    assert result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_a_bad_timeout_is_a_usage_error(run_cli: RunCli, timeout: str) -> None:
    result = run_cli("check", "--hosts", "valkey://localhost", "--timeout", timeout)
    assert result.status == 2
    assert "--timeout" in result.stderr


# The installed program ----------------------------------------------------------------------------------------


def test_the_installed_program(run_cli_process: Callable[..., Any], valkey_url: str) -> None:
    result = run_cli_process("check", "--hosts", valkey_url)
    assert result.status == 0, result.stderr
    assert "1 shard checked: no problems found (exit status 0)" in result.stdout
    result = run_cli_process("check", "--hosts", "nowhere")
    assert result.status == 2
    assert "channels-valkey check: --hosts: hosts[0] = 'nowhere'" in result.stderr


# The rules --------------------------------------------------------------------------------------------------


def _commands_in(text: str) -> set[str]:
    """The command names quoted in ``text`` (``ZADD``, ``CLIENT ID``; not ``{prefix}*`` or ``$inflight``)."""
    return {token for token in re.findall(r"`([^`]+)`", text) if re.fullmatch(r"[A-Z]+( [A-Z]+)?", token)}


def _readme_commands(layer: str, *, cluster: bool) -> set[str]:
    """The commands of the "Commands and ACLs" table of ``layer``'s README, on one server or on a cluster.

    The table's row "on a Valkey Cluster" adds the commands it names to the others' and takes away those it names
    after "instead of".
    """
    text = README[layer].read_text()
    section = text.split("## Commands and ACLs", 1)[1].split("\n## ", 1)[0]
    rows = [
        line for line in section.splitlines() if line.startswith("|") and not set(line) <= {"|", "-", " "}
    ]
    rows = rows[1:]  # the first is the header
    cluster_rows = [row for row in rows if row.split("|")[1].strip() == "on a Valkey Cluster"]
    assert len(cluster_rows) == 1, f"{README[layer]}: expected one row 'on a Valkey Cluster'"
    single = set().union(*(_commands_in(row) for row in rows if row not in cluster_rows))
    if not cluster:
        return single
    (row,) = cluster_rows
    replaced = re.search(r"instead of ([^;|]*)", row)
    taken_away = _commands_in(replaced.group(1)) if replaced else set()
    return (single - taken_away) | (_commands_in(row) - taken_away)


@pytest.mark.parametrize("cluster", [False, True], ids=["one-server", "cluster"])
@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_the_table_of_needs_matches_the_readme(layer: str, cluster: bool) -> None:
    assert commands_of(layer, cluster=cluster) == _readme_commands(layer, cluster=cluster)


def test_on_a_cluster_the_pubsub_layer_needs_the_sharded_commands_instead() -> None:
    single, sharded = commands_of("pubsub"), commands_of("pubsub", cluster=True)
    assert {"PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE"} <= single - sharded
    assert sharded - single == {"SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE", "CLUSTER SLOTS", "ASKING", "EXISTS"}
    assert commands_of("core", cluster=True) - commands_of("core") == {"CLUSTER SLOTS", "ASKING"}
    # Without worker queues, nothing of theirs is asked for on a cluster either.
    uses = {need.use for need in needs_of("pubsub", worker_queues=False, cluster=True)}
    assert not any("worker channels on queues" in use for use in uses)
    levels = {need.commands: need.severity for need in needs_of("pubsub", cluster=True)}
    assert levels[frozenset({"CLUSTER SLOTS"})] == "error"
    assert levels[frozenset({"ASKING"})] == "warning"
    assert levels[frozenset({"EXISTS"})] == "note"


@pytest.mark.parametrize(("layer", "module"), [("core", core_scripts), ("pubsub", pubsub_scripts)])
def test_every_command_of_the_layers_scripts_is_in_the_table(layer: str, module: Any) -> None:
    called = {
        command.upper()
        for value in vars(module).values()
        if isinstance(value, str)
        for command in re.findall(r"redis\.call\('([A-Za-z]+)'", value)
    }
    assert called, f"no script found in {module.__name__}"
    assert called <= commands_of(layer)


def test_every_need_has_a_harmless_probe() -> None:
    cluster_needs = (*needs_of("core", cluster=True), *needs_of("pubsub", cluster=True))
    for need in (*CORE_NEEDS, *PUBSUB_NEEDS, *cluster_needs):
        for command in need.commands:
            args = probe_args(command, "asgi__check__x", "asgi__check__x")
            assert " ".join(str(arg) for arg in args).upper().startswith(command)


@pytest.mark.parametrize(
    ("name", "version", "level"),
    [
        ("valkey", "8.1.8", None),
        ("valkey", "7.2.4", None),
        ("valkey", "7.0.0", "error"),
        ("redis", "7.0.15", "note"),
        ("redis", "7.4.1", "note"),
        ("redis", "6.2.14", "error"),
        ("keydb", "6.3.4", "warning"),
        (None, None, "warning"),
    ],
)
def test_server_versions(name: str | None, version: str | None, level: str | None) -> None:
    verdict = judge_server(name, version)
    assert (verdict[0] if verdict else None) == level


@pytest.mark.parametrize(
    ("policy", "level"),
    [("noeviction", None), ("allkeys-lfu", "warning"), ("volatile-lru", "warning"), ("odd-policy", "note")],
)
def test_eviction_policies(policy: str, level: str | None) -> None:
    verdict = judge_eviction(policy)
    assert (verdict[0] if verdict else None) == level
