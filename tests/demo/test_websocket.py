"""The chat over real WebSockets: clients on two uvicorn workers talk through the layer; other rooms hear nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from servers.process import ValkeyProcess

#: Connections to open, at most, before two land on different workers (they share one listening socket).
#: Longest wait for a connection served by another worker than the first client's.
WORKERS_TIMEOUT = 30.0
#: Pause between two connections that landed on the same worker.
ATTEMPT_PAUSE = 0.05
RECEIVE_TIMEOUT = 10.0


async def receive(client: ClientConnection) -> dict[str, Any]:
    """The next frame the chat sends ``client``, decoded; fails the test after a timeout."""
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(client.recv(), RECEIVE_TIMEOUT))
    return frame


class Clients:
    """WebSocket clients of one test, all closed when it ends."""

    def __init__(self, demo: Any, stack: contextlib.AsyncExitStack) -> None:
        self.demo = demo
        self.stack = stack

    async def join(self, room: str) -> tuple[ClientConnection, dict[str, Any]]:
        """Connect to ``room``; return the connection and its welcome frame."""
        client = await connect(self.demo.ws_url(room), origin=self.demo.origin, open_timeout=RECEIVE_TIMEOUT)
        self.stack.push_async_callback(client.close)
        welcome = await receive(client)
        assert welcome["type"] == "welcome", welcome
        assert welcome["room"] == room
        assert welcome["layer"] == self.demo.layer
        return client, welcome

    async def on_two_workers(
        self, room: str
    ) -> tuple[tuple[ClientConnection, int], tuple[ClientConnection, int]]:
        """Two clients of ``room`` served by different worker processes (the other connections are closed).

        Connections land on whichever worker accepts first. Just after the demo answers its first request, the other
        worker may still be importing Django and accept nothing: clients connect again, a moment apart, until one
        lands elsewhere or :data:`WORKERS_TIMEOUT` has passed.
        """
        first, welcome = await self.join(room)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKERS_TIMEOUT
        attempts = 0
        while True:
            client, other = await self.join(room)
            if other["worker"] != welcome["worker"]:
                return (first, welcome["worker"]), (client, other["worker"])
            await client.close()
            attempts += 1
            if loop.time() > deadline:
                pytest.fail(
                    f"{attempts} connections in {WORKERS_TIMEOUT:g} s all landed on worker {welcome['worker']}"
                )
            await asyncio.sleep(ATTEMPT_PAUSE)


@pytest.fixture
async def clients(demo: Any) -> AsyncIterator[Clients]:
    async with contextlib.AsyncExitStack() as stack:
        yield Clients(demo, stack)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


async def say(client: ClientConnection, author: str, text: str) -> None:
    await client.send(json.dumps({"type": "message", "author": author, "text": text}))


async def test_workers_relay_messages_through_the_layer(demo: Any, clients: Clients) -> None:
    room = unique("room")
    (first, first_pid), (second, second_pid) = await clients.on_two_workers(room)
    outsider, _ = await clients.join(unique("elsewhere"))
    assert first_pid != second_pid

    await say(first, "ada", "hello from the first worker")
    await say(second, "grace", "hello from the second worker")

    for client, own_pid in ((first, first_pid), (second, second_pid)):
        frames = [await receive(client), await receive(client)]
        by_author = {frame["author"]: frame for frame in frames}
        assert set(by_author) == {"ada", "grace"}, frames
        assert by_author["ada"]["text"] == "hello from the first worker"
        assert by_author["grace"]["text"] == "hello from the second worker"
        # Stamped by the worker that received each message from its author ...
        assert by_author["ada"]["worker"] == first_pid
        assert by_author["grace"]["worker"] == second_pid
        # ... and delivered by this client's own worker: the remote one crossed processes through Valkey.
        assert {frame["delivered_by"] for frame in frames} == {own_pid}
        assert all(frame["type"] == "message" for frame in frames)

    # Room messages reached both members before this one was sent: had the outsider been sent any, they would
    # come before its own message.
    await say(outsider, "eve", "anyone here?")
    echoed = await receive(outsider)
    assert (echoed["type"], echoed["author"], echoed["text"]) == ("message", "eve", "anyone here?")


async def test_the_layer_at_work_is_the_one_named(
    demo: Any, clients: Clients, valkey_server: ValkeyProcess, eventually: Callable[..., Awaitable[None]]
) -> None:
    """The welcome frame and the page only repeat the setting's label; this looks for what the running layer
    itself leaves on the demo's Valkey when a client joins a room: a group sorted set (core) or a subscription
    to the group's Pub/Sub channel (pubsub), and never the other."""
    assert demo.valkey_urls == [valkey_server.url()]
    prefix = demo.channel_layer_settings()["CONFIG"]["prefix"]
    room = unique("room")
    group = demo.group_of(room)
    group_key = f"{prefix}:group:{group}"  # the core layer's sorted set of the group's channels
    group_channel = f"{prefix}__group__{group}"  # what the Pub/Sub layer subscribes a group's members to

    with valkey_server.client() as server:

        def on_server() -> tuple[int, int]:
            """(channels in the group's sorted set, connections subscribed to the group's channel)."""
            [(_, subscribers)] = server.pubsub_numsub(group_channel)
            return server.zcard(group_key), subscribers

        assert on_server() == (0, 0)
        client, _ = await clients.join(room)
        # The consumer says welcome only once group_add has returned: the layer has done its part by now.
        members, subscribers = on_server()
        seen = (
            f"{demo.layer} layer: {members} in {group_key!r}, {subscribers} subscribed to {group_channel!r}"
        )
        if demo.layer == "core":
            assert (members, subscribers) == (1, 0), seen
        else:
            assert members == 0, seen
            assert subscribers > 0, seen

        await client.close()
        await eventually(lambda: on_server() == (0, 0), f"the {demo.layer} layer to let go of {group!r}")


@pytest.mark.parametrize(
    ("segment", "room"),
    [("bad%20room", "bad room"), ("caf%C3%A9", "café"), ("x" * 95, "x" * 95), ("a%2Fb", "a/b")],
    ids=["space", "non-ascii", "too-long", "slash"],
)
async def test_bad_room_is_refused_with_a_reason(demo: Any, segment: str, room: str) -> None:
    async with connect(demo.ws_url(segment), origin=demo.origin, open_timeout=RECEIVE_TIMEOUT) as client:
        error = await receive(client)
        await asyncio.wait_for(client.wait_closed(), RECEIVE_TIMEOUT)
    assert error["type"] == "error"
    assert repr(room) in error["error"]
    assert "94 ASCII letters, digits, hyphens, underscores or periods" in error["error"]
    assert client.close_code == 4400


async def test_bad_frames_get_an_error_and_the_connection_stays(demo: Any, clients: Clients) -> None:
    client, _ = await clients.join(unique("room"))
    bad_frames = [
        ("not json", "a frame must be JSON"),
        (json.dumps(["a", "list"]), "a frame must be a JSON object, not list"),
        (json.dumps({"type": "shout", "author": "a", "text": "b"}), "unknown frame type 'shout'"),
        (json.dumps({"type": "message", "author": "  ", "text": "hi"}), "'author' must not be empty"),
        (json.dumps({"type": "message", "author": "a", "text": 5}), "'text' must be a string, got int"),
        (
            json.dumps({"type": "message", "author": "a" * 33, "text": "hi"}),
            "'author' is 33 characters long; the limit is 32",
        ),
        (
            json.dumps({"type": "message", "author": "a", "text": "b" * 501}),
            "'text' is 501 characters long; the limit is 500",
        ),
    ]
    for raw, expected in bad_frames:
        await client.send(raw)
        error = await receive(client)
        assert error["type"] == "error", error
        assert expected in error["error"]
    await client.send(b"binary")
    assert "send JSON text frames" in (await receive(client))["error"]

    await say(client, "  ada  ", " " + "b" * 500 + " ")
    accepted = await receive(client)
    assert (accepted["type"], accepted["author"], accepted["text"]) == ("message", "ada", "b" * 500)


async def test_a_page_of_another_site_cannot_open_a_socket(demo: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(demo.ws_url("lobby"), origin="http://evil.example", open_timeout=RECEIVE_TIMEOUT)
    assert refused.value.response.status_code == 403


async def test_the_metrics_page_shows_the_layer_at_work(demo: Any, clients: Clients) -> None:
    """After a chat between two workers, ``/metrics`` (whichever worker answers: each sent a group message)
    shows the layer's OpenTelemetry metrics in Prometheus's text format."""
    room = unique("room")
    (first, _), (second, _) = await clients.on_two_workers(room)
    await say(first, "ada", "counted")
    await say(second, "grace", "counted too")
    for client in (first, second):
        assert {(await receive(client))["text"] for _ in range(2)} == {"counted", "counted too"}

    def fetch() -> tuple[str, str, str]:
        with urllib.request.urlopen(demo.url + "metrics", timeout=RECEIVE_TIMEOUT) as response:
            return (
                response.headers["Content-Type"],
                response.headers["X-Chat-Worker"],
                response.read().decode(),
            )

    content_type, worker, page = await asyncio.to_thread(fetch)
    assert content_type.startswith("text/plain")
    assert worker.isdigit()
    layer = f'channels_valkey_layer="{demo.layer}"'
    sent = [
        line
        for line in page.splitlines()
        if line.startswith("messaging_client_sent_messages_total{") and layer in line and "group_send" in line
    ]
    assert sent, page
    assert all(float(line.rsplit(" ", 1)[1]) >= 1 for line in sent), sent
    assert "channels_valkey_connections_open" in page
