"""Sync callers: ``async_to_sync`` handing its sends to the layer's own loop (call_loops.py) and reusing connections
across its short-lived loops for the rest (parking.py), and the layers' synchronous API ``layer.sync``
(sync_layer.py). Both layers, against real servers; connections are counted on the server
(``total_connections_received``, ``connected_clients``)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.exceptions import ChannelFull

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.sentinel import PARK_LIMIT
from channels_valkey.sentinel.call_loops import HAND_OFF_LIMIT

from conftest import FOLLOWER_THREAD, WAIT_TIMEOUT, skip_unless_sharded_pubsub
from servers.binaries import Release
from servers.cluster import ValkeyCluster
from servers.process import ValkeyProcess, wait_until
from servers.tls_proxy import TLSProxy
from servers.tls_sentinel import TLSSentinelGroup
from servers.topologies import SentinelGroup

LAYERS = pytest.mark.parametrize(
    "layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer], ids=["core", "pubsub"]
)
#: Calls per measurement of new connections.
CALLS = 200


class NewConnections:
    """Counts the connections ``servers`` accept from now on (each count asks over a connection of its own, which
    is not counted)."""

    def __init__(self, *servers: ValkeyProcess) -> None:
        self._servers = servers
        self._start = self._received()

    def __call__(self) -> int:
        return self._received() - self._start - len(self._servers)

    def _received(self) -> int:
        return sum(int(server.info("stats")["total_connections_received"]) for server in self._servers)


@pytest.fixture
def layers() -> Iterator[list[Any]]:
    """Layers made by a test: their sync loop is stopped and their connections closed afterwards."""
    made: list[Any] = []
    yield made
    for layer in made:
        layer.sync.flush()
        layer.sync.close()
        async_to_sync(layer.close_pools)()


def _make(layers: list[Any], layer_class: type[Any], hosts: list[Any], prefix: str, **options: Any) -> Any:
    layer = layer_class(hosts=hosts, prefix=prefix, **options)
    layers.append(layer)
    return layer


def _send_on_call_loop(layer: Any, channel: str, numbers: range) -> None:
    """One ``async_to_sync`` call whose coroutine sends ``numbers`` to ``channel`` in turn: its loop hands the first
    HAND_OFF_LIMIT sends to the layer's own loop (call_loops.py) and sends the rest itself, over a socket parked by an
    earlier call's loop where there is one, parked again as the loop closes (parking.py)."""

    async def send_all() -> None:
        for n in numbers:
            await layer.send(channel, {"type": "job", "n": n})

    async_to_sync(send_all)()


def _park_a_socket(layer: Any, channel: str) -> None:
    """Calls whose loops send to ``channel`` on their own connection, until one parks its socket as it closes.

    A Sentinel shard's socket is parked only while the process's follower of the service names its primary
    (follower.py); on a loaded machine the first loops may close before the follower listens."""
    wait_until(
        lambda: (
            _send_on_call_loop(layer, channel, range(HAND_OFF_LIMIT + 1))
            or layer.stats()["shards"]["0"]["parked_connections"] >= 1
        ),
        timeout=WAIT_TIMEOUT,
        message="a call's loop to park its socket to the primary",
    )


# async_to_sync: sends handed to the layer's loop, connections parked between loops -------------------------------


@LAYERS
@pytest.mark.parametrize("topology", ["tcp", "unix"])
def test_async_to_sync_sends_reuse_connections(
    layer_class: type[Any],
    topology: str,
    valkey_server: ValkeyProcess,
    unix_valkey: ValkeyProcess,
    key_prefix: str,
    layers: list[Any],
) -> None:
    server = valkey_server if topology == "tcp" else unix_valkey
    url = server.url() if topology == "tcp" else f"unix://{server.unix_socket}?db=0"
    layer = _make(layers, layer_class, [url], key_prefix, capacity=2 * CALLS)
    channel = f"{key_prefix}jobs"
    send = async_to_sync(layer.send)
    send(channel, {"type": "warm-up"})
    opened_since = NewConnections(server)
    for n in range(CALLS):
        send(channel, {"type": "job", "n": n})
    opened = opened_since()
    print(
        f"\n{layer_class.__name__} over {topology}: {opened} new connections for {CALLS} async_to_sync sends"
    )
    assert opened <= 0.05 * CALLS
    assert layer.sync.receive(channel, timeout=5) == {"type": "warm-up"}
    assert [layer.sync.receive(channel, timeout=5)["n"] for _ in range(CALLS)] == list(range(CALLS))


@LAYERS
def test_async_to_sync_sends_are_handed_to_the_layers_own_loop(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """``send``, ``group_send``, ``send_many`` and ``group_send_many`` run by ``async_to_sync`` from a thread with no
    loop go to the loop of ``layer.sync`` (call_loops.py): no call's loop opens or parks a connection."""
    layer = _make(layers, layer_class, [valkey_server.url()], key_prefix, capacity=1000)
    channel = f"{key_prefix}jobs"
    member = layer.sync.new_channel()
    layer.sync.group_add("room", member)
    opened_since = NewConnections(valkey_server)
    for n in range(0, 4 * CALLS, 4):
        async_to_sync(layer.send)(channel, {"type": "job", "n": n})
        async_to_sync(layer.group_send)("room", {"type": "room", "n": n})
        pairs = [(channel, {"type": "job", "n": n + 1}), (channel, {"type": "job", "n": n + 2})]
        sent = async_to_sync(layer.send_many)(pairs)
        assert sent.full == ()
        rooms = async_to_sync(layer.group_send_many)([("room", {"type": "room", "n": n + 3})])
        assert rooms.over_capacity == {}
    assert opened_since() <= 1  # the layer's loop's command lane, where its own calls had not needed it yet
    shard = layer.stats()["shards"]["0"]
    assert shard["parked_connections"] == 0
    jobs = [layer.sync.receive(channel, timeout=5)["n"] for _ in range(3 * CALLS)]
    assert jobs == [n for n in range(4 * CALLS) if n % 4 != 3]
    in_room = [layer.sync.receive(member, timeout=5)["n"] for _ in range(2 * CALLS)]
    assert in_room == [n for n in range(4 * CALLS) if n % 4 in (0, 3)]


@LAYERS
def test_a_sync_view_under_asgi_sends_on_the_servers_own_loop(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """Under an ASGI server a sync view runs in a thread of ``sync_to_async``, and its ``async_to_sync`` calls run
    on the server's event loop, not on a loop made for the call: nothing is handed off (``layer.sync`` never starts),
    no new connection is opened or parked, and a consumer on that loop gets every message in order, also from views
    running at once in threads of their own (``thread_sensitive=False``)."""
    layer = _make(layers, layer_class, [valkey_server.url()], key_prefix, capacity=1000)

    async def serve() -> int:
        member = await layer.new_channel()
        await layer.group_add("room", member)

        def view(n: int) -> None:
            async_to_sync(layer.group_send)("room", {"type": "room", "n": n})
            async_to_sync(layer.send)(member, {"type": "direct", "n": n})

        # The loop's connections are opened before counting.
        await layer.send(member, {"type": "warm-up", "n": -1})
        assert (await _receive_within(layer, member))["n"] == -1
        opened_since = NewConnections(valkey_server)
        for n in range(CALLS):
            await sync_to_async(view)(n)
        received = [await _receive_within(layer, member) for _ in range(2 * CALLS)]
        assert [(message["type"], message["n"]) for message in received] == [
            (kind, n) for n in range(CALLS) for kind in ("room", "direct")
        ]
        await asyncio.gather(*(sync_to_async(view, thread_sensitive=False)(n) for n in range(CALLS)))
        received = [await _receive_within(layer, member) for _ in range(2 * CALLS)]
        assert sorted(message["n"] for message in received) == sorted(2 * list(range(CALLS)))
        # None parked while the server's loop runs (as it closes, its own connections are parked).
        assert layer.stats()["shards"]["0"]["parked_connections"] == 0
        return opened_since()

    assert asyncio.run(serve()) == 0
    assert "_sync_layer" not in layer.__dict__


async def _receive_within(layer: Any, channel: str) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), WAIT_TIMEOUT)
    return message


@LAYERS
def test_a_call_loop_that_keeps_sending_sends_for_itself_after_the_first_sends(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """A loop ``async_to_sync`` made that runs a whole program hands off its first HAND_OFF_LIMIT sends, then
    sends itself (its connection parked as it closes); the messages arrive in the order sent."""
    layer = _make(layers, layer_class, [valkey_server.url()], key_prefix, capacity=1000)
    channel = f"{key_prefix}jobs"
    _send_on_call_loop(layer, channel, range(3 * HAND_OFF_LIMIT))
    shard = layer.stats()["shards"]["0"]
    assert shard["open_connections"] == 1  # the layer's loop's, which took the first sends
    assert shard["parked_connections"] == 1  # the call's loop's, which sent the rest
    received = [layer.sync.receive(channel, timeout=5)["n"] for _ in range(3 * HAND_OFF_LIMIT)]
    assert received == list(range(3 * HAND_OFF_LIMIT))


@LAYERS
def test_a_handed_off_send_raises_in_the_caller_and_runs_an_override_once(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    calls: list[str] = []

    class Recording(layer_class):  # type: ignore[misc, valid-type]
        async def send(self, channel: str, message: dict[str, Any]) -> None:
            calls.append(channel)
            await super().send(channel, message)

    layer = Recording(hosts=[valkey_server.url()], prefix=key_prefix, capacity=1)
    layers.append(layer)
    send = async_to_sync(layer.send)
    send(f"{key_prefix}jobs", {"type": "job", "n": 1})
    with pytest.raises(ChannelFull):
        send(f"{key_prefix}jobs", {"type": "job", "n": 2})
    with pytest.raises(TypeError, match="12345"):
        send(12345, {"type": "job", "n": 3})
    assert calls == [f"{key_prefix}jobs", f"{key_prefix}jobs", 12345]
    assert layer.stats()["shards"]["0"]["parked_connections"] == 0
    assert layer.sync.receive(f"{key_prefix}jobs", timeout=5) == {"type": "job", "n": 1}


@LAYERS
def test_a_layer_dropped_without_close_takes_its_sync_thread_and_connections_along(
    layer_class: type[Any], server_factory: Callable[..., ValkeyProcess], key_prefix: str
) -> None:
    """Code that makes a layer per task and never closes it: the thread and connections its ``async_to_sync`` sends
    started end when the layer is collected."""
    server = server_factory()
    layer = layer_class(hosts=[server.url()], prefix=key_prefix)
    async_to_sync(layer.send)(f"{key_prefix}jobs", {"type": "job"})
    thread_name = layer.sync.thread_name
    assert thread_name in {thread.name for thread in threading.enumerate()}
    assert server.connected_clients() >= 1
    del layer
    gc.collect()
    wait_until(
        lambda: (
            thread_name not in {thread.name for thread in threading.enumerate()}
            and server.connected_clients() == 0
        ),
        timeout=WAIT_TIMEOUT,
        message=lambda: (
            f"the dropped layer's thread and connections to end ({server.connected_clients()} open)"
        ),
    )


def test_async_to_sync_receives_reuse_connections(
    valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """A receive pops on a tracking connection (tracking_lane.py), which turns its tracking off as the loop closes,
    so it is parked and taken by the next loop: a parked socket told of a change since would be thrown away. The
    core layer only: the Pub/Sub layer's loop also opens a subscriber connection, which is not parked."""
    layer = _make(layers, ValkeyChannelLayer, [valkey_server.url()], key_prefix)
    channel = f"{key_prefix}jobs"
    receive = async_to_sync(layer.receive)
    layer.sync.send(channel, {"type": "warm-up"})
    assert receive(channel) == {"type": "warm-up"}
    opened_since = NewConnections(valkey_server)
    for n in range(CALLS):
        layer.sync.send(channel, {"type": "job", "n": n})
        assert receive(channel) == {"type": "job", "n": n}
    opened = opened_since()
    print(f"\n{opened} new connections for {CALLS} async_to_sync receives")
    assert opened <= 0.05 * CALLS


@LAYERS
def test_async_to_sync_on_a_cluster_reuses_each_nodes_connections(
    layer_class: type[Any], valkey_cluster: ValkeyCluster, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, layer_class, [{"cluster": [valkey_cluster.url()]}], key_prefix)
    channels = [f"{key_prefix}jobs{n}" for n in range(8)]  # on several primaries
    send = async_to_sync(layer.send)
    for channel in channels:
        send(channel, {"type": "warm-up"})
    nodes = valkey_cluster.primaries()
    opened_since = NewConnections(*nodes)
    for n in range(CALLS):
        send(channels[n % len(channels)], {"type": "job", "n": n})
    opened = opened_since()
    print(f"\n{layer_class.__name__} on a cluster: {opened} new connections for {CALLS} async_to_sync sends")
    assert opened <= 0.05 * CALLS
    for index, channel in enumerate(channels):
        assert layer.sync.receive(channel, timeout=5) == {"type": "warm-up"}
        got = [layer.sync.receive(channel, timeout=5)["n"] for _ in range(index, CALLS, len(channels))]
        assert got == list(range(index, CALLS, len(channels)))


@LAYERS
def test_async_to_sync_on_sentinel_hosts_asks_the_sentinels_once_and_reuses_connections(
    layer_class: type[Any], sentinel_group: SentinelGroup, key_prefix: str, layers: list[Any]
) -> None:
    """The process's follower of the service knows the primary (follower.py): no loop asks the Sentinels, and the
    primary's sockets are parked between loops like a plain server's."""
    layer = _make(layers, layer_class, [sentinel_group.host_entry()], key_prefix, capacity=2 * CALLS)
    channel = f"{key_prefix}jobs"
    send = async_to_sync(layer.send)
    send(channel, {"type": "warm-up"})
    primary = sentinel_group.current_primary()
    to_primary, to_sentinels = NewConnections(primary), NewConnections(*sentinel_group.sentinels)
    started = time.perf_counter()
    for n in range(CALLS):
        send(channel, {"type": "job", "n": n})
    rate = CALLS / (time.perf_counter() - started)  # printed for the README, not asserted
    print(
        f"\n{layer_class.__name__} on Sentinel hosts: {to_primary()} new connections to the primary and "
        f"{to_sentinels()} to the Sentinels for {CALLS} async_to_sync sends, {rate:.0f} calls/s"
    )
    assert to_primary() <= 0.05 * CALLS
    assert to_sentinels() <= 0.05 * CALLS
    assert layer.sync.receive(channel, timeout=5) == {"type": "warm-up"}
    assert [layer.sync.receive(channel, timeout=5)["n"] for _ in range(CALLS)] == list(range(CALLS))


def test_async_to_sync_on_tls_sentinel_hosts_parks_nothing(
    private_tls_sentinel_group: TLSSentinelGroup, key_prefix: str, layers: list[Any]
) -> None:
    """TLS keeps its state in the loop's transport: a call's loop that sends for itself connects to the primary
    and closes what it opened. Sends handed to the layer's loop share its one connection."""
    group = private_tls_sentinel_group
    layer = _make(layers, ValkeyChannelLayer, [group.host_entry()], key_prefix)
    send = async_to_sync(layer.send)
    for n in range(10):
        send(f"{key_prefix}jobs", {"type": "job", "n": n})
    assert layer.stats()["shards"]["0"]["open_connections"] == 1  # the layer's loop's
    _send_on_call_loop(layer, f"{key_prefix}jobs", range(10, 10 + HAND_OFF_LIMIT + 4))
    assert layer.stats()["shards"]["0"]["parked_connections"] == 0
    assert layer.stats()["shards"]["0"]["open_connections"] == 1
    group.check_transport(group.current_primary())
    received = [
        layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(10 + HAND_OFF_LIMIT + 4)
    ]
    assert received == list(range(10 + HAND_OFF_LIMIT + 4))


def _readonly_refusals(server: ValkeyProcess) -> int:
    return int(server.info("errorstats").get("errorstat_READONLY", {}).get("count", 0))


@LAYERS
def test_async_to_sync_calls_follow_a_failover_and_drop_the_old_primarys_sockets(
    layer_class: type[Any], private_sentinel_group: SentinelGroup, key_prefix: str, layers: list[Any]
) -> None:
    group = private_sentinel_group
    layer = _make(layers, layer_class, [group.host_entry()], key_prefix)
    channel = f"{key_prefix}jobs"
    _send_on_call_loop(layer, channel, range(20))  # the last 4 on the call's loop
    _park_a_socket(layer, f"{key_prefix}warm-up")
    old = group.current_primary()
    group.failover()
    new = group.wait_for_new_primary(old, 20)
    wait_until(
        lambda: layer.stats()["shards"]["0"]["failovers"] == 1,
        timeout=WAIT_TIMEOUT,
        message="the follower to hear of the switch",
    )
    refused_before = _readonly_refusals(old)
    _send_on_call_loop(layer, channel, range(20, 40))
    # Neither the layer's loop nor the call's wrote to the demoted primary (over a socket parked before the
    # switch): each send went to the new one.
    assert _readonly_refusals(old) == refused_before
    with new.client() as client:
        assert client.zcard(layer.queue_key(channel)) == 40
    assert [layer.sync.receive(channel, timeout=5)["n"] for _ in range(40)] == list(range(40))


def test_tls_connections_are_not_parked_and_not_leaked(
    tls_valkey: TLSProxy, valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    hosts = [{"address": tls_valkey.url(), "ssl_ca_certs": str(tls_valkey.ca_file)}]
    layer = _make(layers, ValkeyChannelLayer, hosts, key_prefix)
    baseline = valkey_server.connected_clients()
    sent = HAND_OFF_LIMIT + 4
    for call in range(5):
        _send_on_call_loop(layer, f"{key_prefix}jobs", range(call * sent, (call + 1) * sent))
    assert layer.stats()["shards"]["0"]["parked_connections"] == 0
    assert (
        layer.stats()["shards"]["0"]["open_connections"] == 1
    )  # the layer's loop's, which the sends were handed
    # Each call's loop closed its TLS connection; the server counts it gone once the proxy has passed the close on.
    wait_until(
        lambda: valkey_server.connected_clients() <= baseline + 1,
        timeout=WAIT_TIMEOUT,
        message="the server to see every TLS connection of a call's loop closed",
    )
    received = [layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(5 * sent)]
    assert received == list(range(5 * sent))


def test_a_parked_socket_the_server_closed_is_replaced(
    server_factory: Callable[..., ValkeyProcess], key_prefix: str, layers: list[Any]
) -> None:
    server = server_factory()
    layer = _make(layers, ValkeyChannelLayer, [server.url()], key_prefix)
    sent = HAND_OFF_LIMIT + 2
    _send_on_call_loop(layer, f"{key_prefix}jobs", range(sent))
    assert layer.stats()["shards"]["0"]["parked_connections"] == 1
    with server.client() as admin:
        # The server side of every connection ends: the parked one's and the layer's loop's.
        admin.client_kill_filter(_type="normal", skipme=True)
    _send_on_call_loop(layer, f"{key_prefix}jobs", range(sent, 2 * sent))
    received = [layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(2 * sent)]
    assert received == list(range(2 * sent))


def _send_in_child(layer: Any, channel: str) -> None:
    _send_on_call_loop(layer, channel, range(100, 100 + HAND_OFF_LIMIT + 2))


@pytest.mark.parametrize("topology", ["tcp", "sentinel"])
def test_a_forked_child_never_uses_its_parents_parked_sockets(
    topology: str, request: pytest.FixtureRequest, key_prefix: str, layers: list[Any]
) -> None:
    """On Sentinel hosts the child also follows the primary with a watcher of its own: the parent's thread did not
    come along."""
    if topology == "sentinel":
        hosts = [request.getfixturevalue("sentinel_group").host_entry()]
    else:
        hosts = [request.getfixturevalue("valkey_url")]
    layer = _make(layers, ValkeyChannelLayer, hosts, key_prefix)
    channel = f"{key_prefix}jobs"
    sent = HAND_OFF_LIMIT + 2
    # Leaves a parked socket, and the layer's loop's connection, both copied into the child by fork.
    _send_on_call_loop(layer, channel, range(sent))
    assert layer.stats()["shards"]["0"]["parked_connections"] == 1
    child = multiprocessing.get_context("fork").Process(target=_send_in_child, args=(layer, channel))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    # On the parent's parked socket and its loop's connection, which the child left alone.
    _send_on_call_loop(layer, channel, range(sent, 2 * sent))
    received = [layer.sync.receive(channel, timeout=5)["n"] for _ in range(3 * sent)]
    assert sorted(received) == sorted([*range(2 * sent), *range(100, 100 + sent)])
    from_parent = [n for n in received if n < 100]
    assert from_parent == list(range(2 * sent))


@pytest.mark.usefixtures("no_other_followers")
def test_one_sentinel_follower_thread_serves_every_loop_and_stops_with_the_last_close(
    sentinel_group: SentinelGroup, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, ValkeyChannelLayer, [sentinel_group.host_entry()], key_prefix)
    send = async_to_sync(layer.send)
    for n in range(10):
        send(f"{key_prefix}jobs", {"type": "job", "n": n})
    assert [thread.name for thread in threading.enumerate()].count(FOLLOWER_THREAD) == 1
    async_to_sync(layer.close_pools)()
    assert FOLLOWER_THREAD not in {thread.name for thread in threading.enumerate()}
    send(f"{key_prefix}jobs", {"type": "job", "n": 10})  # starts it again
    assert [layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(11)] == list(range(11))


# layer.sync ----------------------------------------------------------------------------------------------------


@LAYERS
def test_the_sync_api_does_what_the_coroutines_do(
    layer_class: type[Any], valkey_url: str, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, layer_class, [valkey_url], key_prefix)
    sync = layer.sync
    channel = sync.new_channel()
    assert "!" in channel
    sync.group_add("room", channel)
    sync.group_send("room", {"type": "grouped"})
    sync.send(channel, {"type": "direct"})
    assert sync.receive(channel, timeout=5) == {"type": "grouped"}
    assert sync.receive(channel, timeout=5) == {"type": "direct"}
    sync.group_discard("room", channel)
    sync.send(f"{key_prefix}jobs", {"type": "job"})
    assert sync.receive(f"{key_prefix}jobs", timeout=5) == {"type": "job"}
    assert sync.health(timeout=1.0).ok
    assert layer.stats()["sent"] == {"normal": 1, "process": 1, "group": 1}
    # The bulk calls, in one call each from sync code.
    sync.group_add("other", channel)
    sent = sync.send_many([(channel, {"type": "bulk", "n": n}) for n in range(3)])
    assert (sent.sent, sent.full) == (3, ())
    grouped = sync.group_send_many([("room", {"type": "nobody"}), ("other", {"type": "bulk-group"})])
    assert grouped.sent == 2
    assert [sync.receive(channel, timeout=5) for _ in range(4)] == [
        *({"type": "bulk", "n": n} for n in range(3)),
        {"type": "bulk-group"},
    ]


@LAYERS
def test_sync_checks_raise_before_anything_is_written(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, layer_class, [valkey_server.url()], key_prefix, capacity=2)
    with pytest.raises(TypeError, match="not-a-dict"):
        layer.sync.send(f"{key_prefix}jobs", "not-a-dict")
    with pytest.raises((TypeError, ValueError), match="bad name"):
        layer.sync.send("bad name", {"type": "x"})
    with valkey_server.client() as client:
        assert client.keys(f"{key_prefix}*") == []
    layer.sync.send(f"{key_prefix}jobs", {"type": "1"})
    layer.sync.send(f"{key_prefix}jobs", {"type": "2"})
    with pytest.raises(ChannelFull):
        layer.sync.send(f"{key_prefix}jobs", {"type": "3"})


def test_sync_receive_times_out_and_loses_nothing(
    valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, ValkeyChannelLayer, [valkey_server.url()], key_prefix)
    channel = f"{key_prefix}jobs"
    for _ in range(20):
        with pytest.raises(TimeoutError):
            layer.sync.receive(channel, timeout=0.01)
    layer.sync.send(channel, {"type": "later"})
    assert layer.sync.receive(channel, timeout=5) == {"type": "later"}
    with valkey_server.client() as client:
        assert client.zcard(layer.queue_key(channel)) == 0


async def test_the_sync_api_refuses_to_block_a_running_loop(
    valkey_server: ValkeyProcess, key_prefix: str
) -> None:
    layer = ValkeyChannelLayer(hosts=[valkey_server.url()], prefix=key_prefix)
    with pytest.raises(RuntimeError, match="await the layer's coroutine method"):
        layer.sync.send(f"{key_prefix}jobs", {"type": "x"})
    with valkey_server.client() as client:
        assert client.keys(f"{key_prefix}*") == []  # refused before it ran
    assert layer.sync.thread_name not in {thread.name for thread in threading.enumerate()}


@LAYERS
def test_many_threads_share_the_sync_loop_and_its_connections(
    layer_class: type[Any], valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, layer_class, [valkey_server.url()], key_prefix, capacity=10_000)
    channel = f"{key_prefix}jobs"
    layer.sync.send(channel, {"type": "warm-up", "thread": -1, "n": 0})
    opened_since = NewConnections(valkey_server)
    errors: list[BaseException] = []

    def sender(thread: int) -> None:
        try:
            for n in range(300):
                layer.sync.send(channel, {"type": "job", "thread": thread, "n": n})
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=sender, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    opened = opened_since()
    print(f"\n8 threads x 300 sync sends: {opened} new connections")
    assert opened <= 2  # the sync loop's connections are made once, whatever the number of threads
    got: dict[int, list[int]] = {}
    for _ in range(8 * 300 + 1):
        message = layer.sync.receive(channel, timeout=5)
        got.setdefault(message["thread"], []).append(message["n"])
    assert got.pop(-1) == [0]
    assert got == {thread: list(range(300)) for thread in range(8)}  # each thread's sends in its order


@pytest.mark.slow
def test_100_000_sync_calls_from_8_threads_keep_the_connection_count_flat(
    valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """The issue's figure: ``layer.sync`` and ``async_to_sync`` calls mixed, 100,000 in all, from 8 threads."""
    layer = _make(layers, ValkeyChannelLayer, [valkey_server.url()], key_prefix)
    layer.sync.group_add("room", f"{key_prefix}member")
    async_to_sync(layer.group_add)("room", f"{key_prefix}member")
    baseline = valkey_server.connected_clients()
    opened_since = NewConnections(valkey_server)
    most = [baseline]
    done = threading.Event()

    def watch() -> None:
        with valkey_server.client() as admin:  # one connection of its own, counted below
            while not done.wait(0.2):
                most.append(int(admin.info("clients")["connected_clients"]) - 1)

    def caller(thread: int) -> None:
        via_async_to_sync = async_to_sync(layer.group_send)
        for n in range(12_500):
            if n % 25 == 0:
                via_async_to_sync("room", {"type": "a2s", "n": n})
            else:
                layer.sync.group_send("room", {"type": "sync", "n": n})
            if n % 100 == 0:
                layer.sync.flush()  # keeps the member's queue under its capacity

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=caller, args=(number,)) for number in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        done.set()
        watcher.join()
    assert layer.stats()["sent"]["group"] == 100_000  # every call went through
    opened = opened_since() - 1  # the watcher's
    print(f"\n100,000 sync calls from 8 threads: {opened} new connections, at most {max(most)} clients")
    # Bounded by the threads, not by the calls: the sync loop's few (its lane, the connection flush scans on), and
    # per thread's async_to_sync loop its lane's, parked between its calls (two when a loop starts while another
    # is still parking its socket). 100,000 calls opened 11 to 15 in all here.
    assert max(most) <= baseline + 3 + 2 * min(8, PARK_LIMIT)
    assert opened <= 3 + 2 * min(8, PARK_LIMIT)


def test_the_sync_api_needs_no_django_settings(valkey_url: str, key_prefix: str) -> None:
    script = (
        "import os, sys\n"
        "assert 'DJANGO_SETTINGS_MODULE' not in os.environ\n"
        "from channels_valkey.core import ValkeyChannelLayer\n"
        f"layer = ValkeyChannelLayer(hosts=[{valkey_url!r}], prefix={key_prefix!r})\n"
        f"layer.sync.send({key_prefix + 'jobs'!r}, {{'type': 'plain'}})\n"
        f"print(layer.sync.receive({key_prefix + 'jobs'!r}, timeout=5)['type'])\n"
        "layer.sync.close()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain"


def test_sync_close_stops_the_loop_and_the_next_call_starts_it_again(
    valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    layer = _make(layers, ValkeyChannelLayer, [valkey_server.url()], key_prefix)
    layer.sync.send(f"{key_prefix}jobs", {"type": "1"})
    assert layer.sync.thread_name in {thread.name for thread in threading.enumerate()}
    layer.sync.close()
    assert layer.sync.thread_name not in {thread.name for thread in threading.enumerate()}
    assert layer.sync.receive(f"{key_prefix}jobs", timeout=5) == {"type": "1"}


@LAYERS
@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_the_sync_api_follows_sentinel_and_cluster_hosts(
    layer_class: type[Any],
    topology: str,
    request: pytest.FixtureRequest,
    server_under_test: Release,
    key_prefix: str,
    layers: list[Any],
) -> None:
    if topology == "sentinel":
        sentinel_group: SentinelGroup = request.getfixturevalue("sentinel_group")
        hosts = [sentinel_group.host_entry()]
    else:
        if layer_class is ValkeyPubSubChannelLayer:
            skip_unless_sharded_pubsub(server_under_test)
        valkey_cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        hosts = [{"cluster": [valkey_cluster.url()]}]
    layer = _make(layers, layer_class, hosts, key_prefix)
    channel = layer.sync.new_channel()
    layer.sync.group_add("room", channel)
    for n in range(50):
        layer.sync.group_send("room", {"type": "g", "n": n})
        layer.sync.send(f"{key_prefix}jobs", {"type": "j", "n": n})
    assert [layer.sync.receive(channel, timeout=5)["n"] for _ in range(50)] == list(range(50))
    assert [layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(50)] == list(range(50))


def test_async_to_sync_from_a_thread_pool_reuses_connections(
    valkey_server: ValkeyProcess, key_prefix: str, layers: list[Any]
) -> None:
    """Celery's thread pool, or Django's sync views under ASGI: several threads, each call on a fresh loop."""
    layer = _make(layers, ValkeyChannelLayer, [valkey_server.url()], key_prefix, capacity=10_000)
    send = async_to_sync(layer.send)
    send(f"{key_prefix}jobs", {"type": "warm-up", "n": -1})
    opened_since = NewConnections(valkey_server)

    def calls(thread: int) -> None:
        for n in range(100):
            send(f"{key_prefix}jobs", {"type": "job", "n": thread * 1000 + n})

    threads = [threading.Thread(target=calls, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    opened = opened_since()
    print(f"\n4 threads x 100 async_to_sync sends: {opened} new connections")
    assert opened <= 4  # at most one per thread's concurrent loop, then parked and reused
    received = {layer.sync.receive(f"{key_prefix}jobs", timeout=5)["n"] for _ in range(401)}
    assert received == {-1} | {thread * 1000 + n for thread in range(4) for n in range(100)}


def test_sync_loop_thread_is_a_daemon(valkey_url: str, key_prefix: str, layers: list[Any]) -> None:
    layer = _make(layers, ValkeyChannelLayer, [valkey_url], key_prefix)
    layer.sync.send(f"{key_prefix}jobs", {"type": "x"})
    [thread] = [thread for thread in threading.enumerate() if thread.name == layer.sync.thread_name]
    assert thread.daemon  # a process exits without closing the layer
