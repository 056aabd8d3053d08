"""``channels-valkey check`` and ``inspect`` on a real Valkey Cluster: each primary is a row, a cluster entry is
right and a cluster node given as a plain host is not, the ACL is asked for the cluster's commands on every node,
and names read back from hash-tagged keys lose their braces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.cluster import ValkeyCluster, parse_cluster_nodes
from servers.process import ValkeyProcess, wait_until

RunCli = Callable[..., Any]


def _node_url(node: ValkeyProcess) -> str:
    """How ``check`` names a node of the cluster in its host column."""
    host, port = node.address
    return f"valkey://{host}:{port}/0"


def _primary_urls(cluster: ValkeyCluster) -> set[str]:
    return {_node_url(node) for node in cluster.primaries()}


def _spread(cluster: ValkeyCluster, make_key: Callable[[str], str], stem: str) -> list[str]:
    """One name per primary, each name's key (``make_key(name)``) in a slot that primary serves."""
    found: dict[tuple[str, int], str] = {}
    for number in range(500):
        name = f"{stem}{number}"
        found.setdefault(cluster.primary_for(make_key(name)).address, name)
        if len(found) == cluster.primary_count:
            return list(found.values())
    raise AssertionError(f"500 names starting with {stem!r} did not reach every primary")


def _add_user(nodes: Iterable[ValkeyProcess], user: str, rules: list[str]) -> str:
    """An ACL user with ``rules`` on every node (ACLs are per node); returns the URL of the first node as them."""
    nodes = list(nodes)
    for node in nodes:
        with node.client() as client:
            client.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", *rules)
    host, port = nodes[0].address
    return f"valkey://{user}:pw@{host}:{port}"


# check ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_a_healthy_cluster_passes(
    run_cli: RunCli, valkey_cluster: ValkeyCluster, key_prefix: str, layer: str
) -> None:
    url = valkey_cluster.url()
    result = run_cli("check", "--cluster", url, "--layer", layer, "--prefix", key_prefix)
    assert result.status == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"{layer} layer, prefix {key_prefix!r} (--cluster)"
    rows = [line.split() for line in lines[4:7]]
    assert {row[1] for row in rows} == _primary_urls(valkey_cluster)
    for row in rows:
        assert row[2] == "yes"
        assert row[7:] == ["primary", "(cluster)", "noeviction", "ok"]
    assert "3 shards checked: no problems found (exit status 0)" in result.stdout

    # The same cluster as a JSON entry of --hosts.
    entry = json.dumps({"cluster": [url]})
    document = run_cli("check", "--hosts", entry, "--layer", layer, "--prefix", key_prefix, "--json").json()
    assert (document["status"], document["findings"]) == (0, [])
    assert len(document["shards"]) == 3
    for shard in document["shards"]:
        assert (shard["mode"], shard["role"], shard["cluster"]) == ("cluster", "primary", {"state": "ok"})
        assert shard["acl"]["status"] == "ok"
        asked = {command for need in shard["acl"]["needs"] for command in need["way"]}
        assert {"CLUSTER SLOTS", "ASKING"} <= asked
        if layer == "pubsub":
            assert {"SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE", "EXISTS"} <= asked
            assert not {"PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE"} & asked


def test_settings_with_a_cluster_entry(
    run_cli: RunCli, valkey_cluster: ValkeyCluster, key_prefix: str, settings_module: Callable[..., str]
) -> None:
    config = {"hosts": [{"cluster": valkey_cluster.startup_nodes()[:2]}], "prefix": key_prefix}
    module = settings_module(
        {"default": {"BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer", "CONFIG": config}}
    )
    result = run_cli("check", "--settings", module)
    assert result.status == 0, result.stdout
    assert result.stdout.startswith(f"pubsub layer, prefix {key_prefix!r} (settings {module}")
    assert result.stdout.count("primary (cluster)") == 3


def test_a_cluster_node_given_as_a_plain_host_is_an_error(
    run_cli: RunCli, valkey_cluster: ValkeyCluster
) -> None:
    url = valkey_cluster.url()
    result = run_cli("check", "--hosts", url)
    assert result.status == 1
    assert (
        "the server runs in cluster mode: as a plain hosts entry the layer would get MOVED" in result.stdout
    )
    assert 'write the cluster as one entry, {"cluster": ["valkey://HOST:PORT", ...]}' in result.stdout
    assert "--cluster URL" in result.stdout
    (shard,) = run_cli("check", "--hosts", url, "--json").json()["shards"]
    assert shard["mode"] == "cluster"
    assert shard["cluster"] is None
    assert shard["acl"]["status"] == "unknown"  # the ACL is not asked about a set-up that cannot work


def test_a_cluster_entry_naming_a_server_not_in_cluster_mode_is_an_error(
    run_cli: RunCli, valkey_url: str
) -> None:
    result = run_cli("check", "--cluster", valkey_url)
    assert result.status == 1
    assert "not a cluster:" in result.stdout
    assert "cluster support disabled" in result.stdout
    assert "a server that is not in cluster mode is a plain hosts entry" in result.stdout


def test_acl_users_on_every_node(run_cli: RunCli, small_cluster: ValkeyCluster, key_prefix: str) -> None:
    nodes = small_cluster.nodes
    # Everything but ACL DRYRUN: each command is probed for real on each primary. The probe names hash to one
    # slot, so on two of the three primaries every keyed probe is answered with MOVED, which means "allowed".
    probing = _add_user(nodes, "probing", ["~*", "&*", "+@all", "-acl"])
    for layer in ("core", "pubsub"):
        document = run_cli(
            "check", "--cluster", probing, "--layer", layer, "--prefix", key_prefix, "--json"
        ).json()
        assert (document["status"], document["findings"]) == (0, []), document["findings"]
        assert [shard["acl"]["method"] for shard in document["shards"]] == ["probe"] * 3
    for node in nodes:  # the probes left nothing behind
        with node.client() as client:
            assert list(client.scan_iter(match=f"{key_prefix}*")) == []

    # No SPUBLISH: every primary says so, including the two that do not serve the probe channel's slot (Valkey
    # checks the ACL before it redirects), both when probing and with ACL DRYRUN.
    for user, rules, method in [
        ("no-spublish", ["~*", "&*", "+@all", "-acl", "-spublish"], "probe"),
        ("no-spublish-dry", ["~*", "&*", "+@all", "-spublish"], "dryrun"),
    ]:
        url = _add_user(nodes, user, rules)
        result = run_cli("check", "--cluster", url, "--layer", "pubsub", "--prefix", key_prefix)
        assert result.status == 1
        assert result.stdout.count("missing: SPUBLISH") == 3
        assert result.stdout.count("send to process channels, group_send: the ACL refuses SPUBLISH") == 3
        document = run_cli(
            "check", "--cluster", url, "--layer", "pubsub", "--prefix", key_prefix, "--json"
        ).json()
        for shard in document["shards"]:
            assert shard["acl"]["method"] == method
            refused = [
                (need["use"], need["refused"]) for need in shard["acl"]["needs"] if need["level"] != "ok"
            ]
            assert refused == [("send to process channels, group_send", ["SPUBLISH"])]
        # The core layer never publishes.
        assert run_cli("check", "--cluster", url, "--prefix", key_prefix).status == 0

    # Keys outside the user's patterns: the report names the hash-tagged probe key, as the layer would write it.
    other_keys = _add_user(nodes, "other-keys", ["~someone-else:*", "&*", "+@all", "-acl"])
    result = run_cli("check", "--cluster", other_keys, "--prefix", key_prefix)
    assert result.status == 1
    refusing = {
        line.split(" (")[0]
        for line in result.stdout.splitlines()
        if f"ZADD on key '{key_prefix}{{__check__" in line
    }
    # Errors for what the layer cannot do; warnings for receipt pops, whose fallback (BZMPOP) needs no new key.
    assert refusing == {f"{level}: shard {index}" for level in ("error", "warning") for index in range(3)}

    # A wrong password: the cluster's nodes cannot be asked for the slot map.
    document = run_cli("check", "--cluster", probing.replace(":pw@", ":wrong@"), "--json").json()
    assert document["status"] == 1
    (shard,) = document["shards"]
    assert shard["login_refused"] is True
    assert document["findings"][0]["message"].startswith("the server refused the login:")

    # Without CLUSTER SLOTS the nodes cannot even be found.
    no_slots = _add_user(nodes, "no-slots", ["~*", "&*", "+@all", "-cluster|slots"])
    result = run_cli("check", "--cluster", no_slots)
    assert result.status == 1
    assert "the ACL refuses CLUSTER SLOTS, which the layers need to find the cluster's nodes" in result.stdout

    # Refusals the layer copes with: a warning for ASKING, a note for EXISTS.
    coping = _add_user(nodes, "coping", ["~*", "&*", "+@all", "-asking", "-exists"])
    document = run_cli(
        "check", "--cluster", coping, "--layer", "pubsub", "--prefix", key_prefix, "--json"
    ).json()
    assert document["status"] == 0
    levels = {(finding["level"], finding["message"].split(":")[0]) for finding in document["findings"]}
    assert levels == {
        ("warning", "commands on a slot being migrated (resharding)"),
        ("note", "following a graceful failover at once (a publish that reached nobody)"),
    }
    assert [shard["acl"]["status"] for shard in document["shards"]] == ["degraded"] * 3


def test_a_cluster_that_lost_a_primary_is_an_error(run_cli: RunCli, small_cluster: ValkeyCluster) -> None:
    survivor, killed = small_cluster.nodes[0], small_cluster.nodes[1]
    killed.kill()

    def failed() -> bool:
        with survivor.client(socket_timeout=1) as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
            nodes = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES").decode())
        return "cluster_state:fail" in info and any(
            node.address == killed.address and node.is_failed for node in nodes
        )

    wait_until(failed, timeout=15, message="the cluster to see its primary fail")
    host, port = survivor.address
    result = run_cli("check", "--cluster", f"valkey://{host}:{port}", "--timeout", "1")
    assert result.status == 1
    document = run_cli("check", "--cluster", f"valkey://{host}:{port}", "--timeout", "1", "--json").json()
    by_host = {shard["host"]: shard for shard in document["shards"]}
    # The slot map still names the dead primary: it is a row, unreachable.
    assert set(by_host) == {_node_url(node) for node in small_cluster.nodes}
    assert by_host[_node_url(killed)]["reachable"] is False
    for node in (survivor, small_cluster.nodes[2]):
        assert by_host[_node_url(node)]["cluster"] == {"state": "fail"}
    messages = [finding["message"] for finding in document["findings"]]
    assert sum("cluster_state is 'fail' (CLUSTER INFO)" in message for message in messages) == 2
    assert any(message.startswith("unreachable: ") for message in messages)


# inspect ----------------------------------------------------------------------------------------------------


def test_inspect_core_on_a_cluster(run_cli: RunCli, valkey_cluster: ValkeyCluster, key_prefix: str) -> None:
    url = valkey_cluster.url()
    layer = ValkeyChannelLayer(hosts=[{"cluster": [url]}], prefix=key_prefix)
    channels = _spread(valkey_cluster, layer.queue_key, "chat.")
    groups = _spread(valkey_cluster, layer.group_key, "room-")

    async def send() -> str:
        for count, channel in enumerate(channels, start=1):
            for _ in range(count):
                await layer.send(channel, {"type": "hello"})
        process = await layer.new_channel()
        await layer.send(process, {"type": "direct"})
        await layer.group_add(groups[0], process)
        await layer.group_add(groups[0], channels[0])
        await layer.group_add(groups[1], channels[1])
        await layer.close_pools()
        return process

    try:
        process = asyncio.run(send())
        result = run_cli("inspect", "--cluster", url, "--prefix", key_prefix, "--json")
        assert result.status == 0, result.stdout
        document = result.json()
        hosts = [shard["host"] for shard in document["shards"]]
        assert set(hosts) == _primary_urls(valkey_cluster)
        assert all(shard["complete"] for shard in document["shards"])
        process_queue = process.split("!")[0] + "!"
        rows = {row["name"]: row for row in document["channels"]}
        assert {name: (row["messages"], row["kind"]) for name, row in rows.items()} == {
            channels[0]: (1, "normal"),
            channels[1]: (2, "normal"),
            channels[2]: (3, "normal"),
            process_queue: (1, "process"),
        }
        for name, row in rows.items():
            # Each queue is listed by the primary that serves its slot.
            assert hosts[row["shard"]] == _node_url(valkey_cluster.primary_for(layer.queue_key(name)))
        found = {group["name"]: group for group in document["groups"]}
        assert {name: group["members"] for name, group in found.items()} == {groups[0]: 2, groups[1]: 1}
        for name, group in found.items():
            assert hosts[group["shard"]] == _node_url(valkey_cluster.primary_for(layer.group_key(name)))

        table = run_cli("inspect", "--cluster", url, "--prefix", key_prefix)
        assert table.status == 0
        assert "{" not in table.stdout
        assert any(line.split()[1:] == [groups[0], "2"] for line in table.stdout.splitlines())
        assert table.stdout.rstrip().endswith(
            "3 shards, 4 channels, 2 groups, 6 keys examined: no problems found (exit status 0)"
        )
    finally:
        asyncio.run(_flush(layer))


async def test_inspect_pubsub_on_a_cluster(
    run_cli: RunCli, valkey_cluster: ValkeyCluster, key_prefix: str
) -> None:
    url = valkey_cluster.url()
    layer = ValkeyPubSubChannelLayer(hosts=[{"cluster": [url]}], prefix=key_prefix)
    workers = await asyncio.to_thread(_spread, valkey_cluster, layer.queue_key, "jobs.")
    try:
        one = await layer.new_channel()
        two = await layer.new_channel()
        await layer.group_add("room", one)
        await layer.group_add("room", two)
        await layer.group_add("lonely", two)
        for count, worker in enumerate(workers, start=1):
            for _ in range(count):
                await layer.send(worker, {"type": "job"})
        result = await asyncio.to_thread(
            run_cli, "inspect", "--cluster", url, "--layer", "pubsub", "--prefix", key_prefix, "--json"
        )
        owners = await asyncio.to_thread(
            lambda: {
                name: _node_url(valkey_cluster.primary_for(key))
                for name, key in [
                    *((worker, layer.queue_key(worker)) for worker in workers),
                    (one, one),
                    (two, two),
                    ("room", f"{key_prefix}__group__room"),
                    ("lonely", f"{key_prefix}__group__lonely"),
                ]
            }
        )
    finally:
        await _flush(layer)
    assert result.status == 0, result.stdout
    document = result.json()
    hosts = [shard["host"] for shard in document["shards"]]
    rows = {row["name"]: row for row in document["channels"]}
    assert {name: (row["kind"], row["subscribers"], row["messages"]) for name, row in rows.items()} == {
        one: ("process", 1, None),
        two: ("process", 1, None),
        workers[0]: ("worker", 0, 1),
        workers[1]: ("worker", 0, 2),
        workers[2]: ("worker", 0, 3),
    }
    found = {group["name"]: group for group in document["groups"]}
    assert {name: group["subscribers"] for name, group in found.items()} == {"room": 1, "lonely": 1}
    for name, row in [*rows.items(), *found.items()]:
        assert hosts[row["shard"]] == owners[name], name


async def _flush(layer: ValkeyChannelLayer | ValkeyPubSubChannelLayer) -> None:
    await layer.flush()
    await layer.close_pools()
