"""``channels-valkey inspect`` after real sends: channels with the right queue lengths and ages, groups with their
live members (or subscribers), one prefix at a time, and a scan that says when its bound cut it short."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from servers.process import ValkeyProcess, free_port
from servers.topologies import SentinelGroup, add_acl_user

RunCli = Callable[..., Any]


@pytest.fixture(params=["single", "shards"])
def urls(request: pytest.FixtureRequest) -> list[str]:
    """The servers of one layer: one, or three shards."""
    if request.param == "single":
        return [request.getfixturevalue("valkey_url")]
    urls: list[str] = request.getfixturevalue("valkey_shards").urls()
    return urls


def _by_channel(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The channel rows of an inspect document summed over shards: messages, kinds, and the oldest age."""
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"messages": 0, "kinds": set(), "oldest": 0.0})
    for row in document["channels"]:
        total = totals[row["name"]]
        total["messages"] += row["messages"] or 0
        total["kinds"].add(row["kind"])
        total["oldest"] = max(total["oldest"], row["oldest_seconds"] or 0.0)
    return dict(totals)


def test_core_channels_and_groups(run_cli: RunCli, urls: list[str], key_prefix: str) -> None:
    prefix = key_prefix + "asgi"
    layer = ValkeyChannelLayer(hosts=urls, prefix=prefix)

    async def send_first() -> tuple[float, float]:
        started = time.time()
        await layer.send("chat.lobby", {"type": "first"})
        return started, time.time()

    async def send_the_rest() -> str:
        for number in range(2):
            await layer.send("chat.lobby", {"type": "more", "n": number})
        await layer.send("chat.other", {"type": "one"})
        process = await layer.new_channel()
        await layer.send(process, {"type": "direct"})
        await layer.send(process, {"type": "direct"})
        await layer.group_add("room", process)
        await layer.group_add("room", "chat.lobby")
        await layer.close_pools()
        return process

    try:
        first_started, first_sent = asyncio.run(send_first())
        # Some time between the first message and the others, so the oldest age is told apart from the newest.
        time.sleep(0.3)
        process = asyncio.run(send_the_rest())
        before = time.time()
        result = run_cli("inspect", "--hosts", *urls, "--prefix", prefix, "--json")
        after = time.time()
        assert result.status == 0, result.stdout
        document = result.json()
        channels = _by_channel(document)
        process_queue = process.split("!")[0] + "!"
        assert {name: (total["messages"], total["kinds"]) for name, total in channels.items()} == {
            "chat.lobby": (3, {"normal"}),
            "chat.other": (1, {"normal"}),
            process_queue: (2, {"process"}),
        }
        # The score of a queued message is its send time: the oldest is the first message (JSON rounds to 1 ms).
        assert (
            before - first_sent - 0.001 <= channels["chat.lobby"]["oldest"] <= after - first_started + 0.001
        )
        assert channels["chat.other"]["oldest"] < channels["chat.lobby"]["oldest"] - 0.2
        assert [(group["name"], group["members"]) for group in document["groups"]] == [("room", 2)]
        assert document["groups"][0]["shard"] == layer.consistent_hash("room")
        assert all(shard["complete"] for shard in document["shards"])
        assert len(document["shards"]) == len(urls)

        table = run_cli("inspect", "--hosts", *urls, "--prefix", prefix)
        assert table.status == 0
        lines = table.stdout.splitlines()
        assert lines[0] == f"core layer, prefix {prefix!r} (--hosts)"
        assert lines[2].split() == ["shard", "channel", "kind", "messages", "oldest"]
        assert any(line.split() == ["shard", "group", "members"] for line in lines)
        assert any(line.split()[1:] == ["room", "2"] for line in lines)
        assert lines[-1].endswith("no problems found (exit status 0)")
    finally:
        asyncio.run(_flush(layer))


def test_through_sentinel(run_cli: RunCli, sentinel_group: SentinelGroup, key_prefix: str) -> None:
    """A Sentinel entry: the primary the Sentinels name is inspected, its row says which service it is."""
    prefix = key_prefix + "asgi"
    entry = sentinel_group.host_entry()
    layer = ValkeyChannelLayer(hosts=[entry], prefix=prefix)

    async def fill() -> None:
        await layer.send("chat.lobby", {"type": "one"})
        await layer.send("chat.lobby", {"type": "two"})
        await layer.group_add("room", "chat.lobby")
        await layer.close_pools()

    try:
        asyncio.run(fill())
        result = run_cli("inspect", "--hosts", json.dumps(entry), "--prefix", prefix, "--json")
        assert result.status == 0, result.stdout
        document = result.json()
        assert {name: total["messages"] for name, total in _by_channel(document).items()} == {"chat.lobby": 2}
        assert [(group["name"], group["members"]) for group in document["groups"]] == [("room", 1)]
        (shard,) = document["shards"]
        assert "mymaster" in json.dumps(shard)
    finally:
        asyncio.run(_flush(layer))


async def _flush(layer: ValkeyChannelLayer | ValkeyPubSubChannelLayer) -> None:
    await layer.flush()
    await layer.close_pools()


def test_group_members_are_the_live_ones_of_the_settings(
    run_cli: RunCli, valkey_server: ValkeyProcess, key_prefix: str, settings_module: Callable[..., str]
) -> None:
    config = {"hosts": [valkey_server.url()], "prefix": key_prefix, "group_expiry": 100}
    module = settings_module(
        {"default": {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": config}}
    )
    layer = ValkeyChannelLayer(**config)

    async def join() -> None:
        await layer.group_add("room", "a.one")
        await layer.group_add("room", "a.two")
        await layer.close_pools()

    asyncio.run(join())
    group_key = f"{key_prefix}:group:room"
    with valkey_server.client() as client:
        # Added 200 s ago: older than this layer's group_expiry of 100 s, though not than the default day.
        client.zadd(group_key, {"a.stale": time.time() - 200})
    try:
        document = run_cli("inspect", "--settings", module, "--json").json()
        assert document["groups"] == [{"shard": 0, "name": "room", "members": 2}]
        # Counted as group_channels counts, which drops the stale member as the next group_send would.
        with valkey_server.client() as client:
            assert sorted(client.zrange(group_key, 0, -1)) == [b"a.one", b"a.two"]
    finally:
        asyncio.run(_flush(layer))


def test_prefixes_are_kept_apart(run_cli: RunCli, valkey_url: str, key_prefix: str) -> None:
    # A prefix with glob characters: unescaped, "app*" would match the other layer's keys too.
    first = ValkeyChannelLayer(hosts=[valkey_url], prefix=key_prefix + "app*")
    second = ValkeyChannelLayer(hosts=[valkey_url], prefix=key_prefix + "appX")

    async def send() -> None:
        await first.send("ch", {"type": "a"})
        await second.send("ch", {"type": "b"})
        await second.send("ch", {"type": "b"})
        await second.group_add("grp", "ch")
        await first.close_pools()
        await second.close_pools()

    try:
        asyncio.run(send())
        document = run_cli("inspect", "--hosts", valkey_url, "--prefix", key_prefix + "app*", "--json").json()
        assert [(row["name"], row["messages"]) for row in document["channels"]] == [("ch", 1)]
        assert document["groups"] == []
        document = run_cli("inspect", "--hosts", valkey_url, "--prefix", key_prefix + "appX", "--json").json()
        assert [(row["name"], row["messages"]) for row in document["channels"]] == [("ch", 2)]
        assert [group["name"] for group in document["groups"]] == ["grp"]
    finally:
        asyncio.run(_flush(first))
        asyncio.run(_flush(second))


def test_the_scan_bound_is_reported(run_cli: RunCli, valkey_url: str, key_prefix: str) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_url], prefix=key_prefix)

    async def send() -> None:
        for number in range(30):
            await layer.send(f"many.{number}", {"type": "x"})
        await layer.close_pools()

    try:
        asyncio.run(send())
        result = run_cli("inspect", "--hosts", valkey_url, "--prefix", key_prefix, "--max-keys", "10")
        assert result.status == 0
        assert (
            "stopped after 10 keys (--max-keys): there may be more, the lists are incomplete" in result.stdout
        )
        document = run_cli(
            "inspect", "--hosts", valkey_url, "--prefix", key_prefix, "--max-keys", "10", "--json"
        ).json()
        assert document["shards"][0]["complete"] is False
        assert document["shards"][0]["keys_examined"] == 10
        assert len(document["channels"]) == 10
        document = run_cli(
            "inspect", "--hosts", valkey_url, "--prefix", key_prefix, "--max-keys", "30", "--json"
        ).json()
        assert document["shards"][0]["complete"] is True
        assert sorted(row["name"] for row in document["channels"]) == sorted(f"many.{n}" for n in range(30))
    finally:
        asyncio.run(_flush(layer))


async def test_pubsub_channels_groups_and_worker_queues(
    run_cli: RunCli, valkey_url: str, key_prefix: str
) -> None:
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_url], prefix=key_prefix)
    try:
        one = await layer.new_channel()
        two = await layer.new_channel()
        await layer.group_add("room", one)
        await layer.group_add("room", two)
        await layer.group_add("lonely", two)
        await layer.send("jobs", {"type": "job"})
        await layer.send("jobs", {"type": "job"})
        # The command runs its own event loop, so it runs in a thread while this one keeps the subscriptions.
        result = await asyncio.to_thread(
            run_cli, "inspect", "--hosts", valkey_url, "--layer", "pubsub", "--prefix", key_prefix, "--json"
        )
        table = await asyncio.to_thread(
            run_cli, "inspect", "--hosts", valkey_url, "--layer", "pubsub", "--prefix", key_prefix
        )
    finally:
        await _flush(layer)
    assert result.status == 0, result.stdout
    document = result.json()
    rows = {row["name"]: row for row in document["channels"]}
    assert set(rows) == {one, two, "jobs"}
    for channel in (one, two):
        assert (rows[channel]["kind"], rows[channel]["subscribers"], rows[channel]["messages"]) == (
            "process",
            1,
            None,
        )
    assert (rows["jobs"]["kind"], rows["jobs"]["subscribers"], rows["jobs"]["messages"]) == ("worker", 0, 2)
    assert rows["jobs"]["oldest_seconds"] is not None
    assert sorted((group["name"], group["subscribers"]) for group in document["groups"]) == [
        ("lonely", 1),
        ("room", 1),
    ]
    assert table.stdout.splitlines()[2].split() == [
        "shard",
        "channel",
        "kind",
        "subscribers",
        "messages",
        "oldest",
    ]


def test_an_unreachable_shard_fails_but_the_others_are_listed(
    run_cli: RunCli, valkey_url: str, key_prefix: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_url], prefix=key_prefix)

    async def send() -> None:
        await layer.send("here", {"type": "x"})
        await layer.close_pools()

    closed = f"valkey://127.0.0.1:{free_port()}/0"
    try:
        asyncio.run(send())
        result = run_cli("inspect", "--hosts", valkey_url, closed, "--prefix", key_prefix, "--json")
        assert result.status == 1
        document = result.json()
        assert [row["name"] for row in document["channels"]] == ["here"]
        assert document["shards"][1]["problem"].startswith("unreachable: ConnectionError")
    finally:
        asyncio.run(_flush(layer))


def test_inspect_never_falls_back_to_keys(
    run_cli: RunCli, secured_valkey: ValkeyProcess, key_prefix: str
) -> None:
    add_acl_user(
        secured_valkey, "keys-only", "pw", [f"~{key_prefix}*", "+keys", "+zcount", "+zrange", "+eval"]
    )
    host, port = secured_valkey.address
    result = run_cli("inspect", "--hosts", f"valkey://keys-only:pw@{host}:{port}", "--prefix", key_prefix)
    assert result.status == 1
    assert "the ACL refuses a command inspect needs" in result.stdout
    assert "'scan'" in result.stdout


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_max_keys_is_a_usage_error(run_cli: RunCli, value: str) -> None:
    result = run_cli("inspect", "--hosts", "valkey://localhost", "--max-keys", value)
    assert result.status == 2
    assert "--max-keys" in result.stderr
