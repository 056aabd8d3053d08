"""The message flows the benchmark suites time, each checking that what arrived is exactly what was sent.

They are the flows ``channels-valkey bench`` times (``channels_valkey.cli.measure``: the same message, the same
steps) with two additions, so that a layer that loses, duplicates or reorders messages fails the run instead
of looking fast:

- every message carries a sequence number, counted per channel over the whole test (a :class:`Stream`, or a
  :class:`Fan` for a group), so a message lost, delivered twice or overtaken by a later one shows as a number out of
  place, in whatever round it happened;
- every receive has a timeout (:data:`RECEIVE_TIMEOUT`), so a lost message fails the round instead of hanging it.

A flow returns how many messages came as sent (the figure ``Turns.check`` compares) and raises ``AssertionError``
naming the first difference otherwise. They take any channel layer, ours or a peer's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from libvalkey import Reader, pack_command

from channels_valkey.cli.measure import GROUP, MESSAGE

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # valkey-py depends on async-timeout there
    from async_timeout import timeout

#: Longest wait for one message: generous, so that only a lost message runs into it.
RECEIVE_TIMEOUT = 10.0


def numbered(number: int) -> dict[str, Any]:
    """The benchmark message (about 100 bytes in msgpack) with its sequence number."""
    return {**MESSAGE, "n": number}


async def receive_within(layer: Any, channel: str) -> dict[str, Any]:
    """The next message of ``channel``; ``AssertionError`` when none arrives within :data:`RECEIVE_TIMEOUT`."""
    try:
        async with timeout(RECEIVE_TIMEOUT):
            message: dict[str, Any] = await layer.receive(channel)
    except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
        raise AssertionError(f"no message arrived on {channel!r} within {RECEIVE_TIMEOUT:g} s") from None
    return message


def _number(message: object) -> object:
    """What a message shows of its place: its number, or the message itself when it is not one of ours intact."""
    if isinstance(message, dict) and isinstance(message.get("n"), int) and message == numbered(message["n"]):
        return message["n"]
    return message


@dataclass
class Stream:
    """One channel of one layer, and the sequence numbers sent to it and expected from it next."""

    layer: Any
    channel: str
    #: The number the next message sent gets.
    sent: int = 0
    #: The number the next message received must carry.
    expected: int = 0

    def to_send(self, count: int) -> range:
        """The numbers of the next ``count`` messages to send."""
        numbers = range(self.sent, self.sent + count)
        self.sent += count
        return numbers

    def check(self, arrived: Sequence[object]) -> int:
        """``len(arrived)`` when they are the next numbers expected, in order; else ``AssertionError``."""
        wanted = range(self.expected, self.expected + len(arrived))
        self.expected += len(arrived)
        for place, (message, number) in enumerate(zip(arrived, wanted, strict=True)):
            if message != numbered(number):
                shown = [_number(one) for one in arrived[max(0, place - 2) : place + 3]]
                raise AssertionError(
                    f"{self.channel!r}: message {place + 1} of {len(arrived)} should have been number {number}, "
                    f"came as {_number(message)!r} (numbers around it: {shown!r})"
                )
        return len(arrived)


async def send_receive_pairs(stream: Stream, count: int) -> int:
    """Send one message and receive it, ``count`` times; how many came as sent."""
    layer, channel = stream.layer, stream.channel
    arrived = []
    for number in stream.to_send(count):
        await layer.send(channel, numbered(number))
        arrived.append(await receive_within(layer, channel))
    return stream.check(arrived)


async def produce_and_consume(stream: Stream, count: int) -> int:
    """One task sends ``count`` messages while another receives them; how many came as sent, in order."""
    layer, channel = stream.layer, stream.channel
    numbers = stream.to_send(count)

    async def produce() -> None:
        for number in numbers:
            await layer.send(channel, numbered(number))

    async def consume() -> list[dict[str, Any]]:
        return [await receive_within(layer, channel) for _ in numbers]

    _, arrived = await asyncio.gather(produce(), consume())
    return stream.check(arrived)


async def windowed(stream: Stream, sender: Any, count: int, window: int) -> int:
    """``sender`` (another layer instance, as another process would be) sends ``count`` messages to the stream's
    channel, never more than ``window`` ahead of what the stream's layer received; how many came as sent, in order.
    """
    layer, channel = stream.layer, stream.channel
    numbers = stream.to_send(count)
    room = asyncio.Semaphore(window)

    async def produce() -> None:
        for number in numbers:
            await room.acquire()
            await sender.send(channel, numbered(number))

    async def consume() -> list[dict[str, Any]]:
        arrived = []
        for _ in numbers:
            arrived.append(await receive_within(layer, channel))
            room.release()
        return arrived

    _, arrived = await asyncio.gather(produce(), consume())
    return stream.check(arrived)


async def drain(stream: Stream, count: int) -> int:
    """Receive ``count`` messages queued beforehand (numbered with ``stream.to_send``); how many came in order."""
    return stream.check([await receive_within(stream.layer, stream.channel) for _ in range(count)])


async def round_trip(stream: Stream) -> float:
    """Seconds from sending one message to having received it; ``AssertionError`` unless it came as sent."""
    (number,) = stream.to_send(1)
    start = time.perf_counter()
    await stream.layer.send(stream.channel, numbered(number))
    message = await receive_within(stream.layer, stream.channel)
    elapsed = time.perf_counter() - start
    stream.check([message])
    return elapsed


class _Replies(asyncio.Protocol):
    """One connection's replies, parsed by libvalkey's reader in the transport's callback, taken one at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = Reader()
        self._replies: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"a stream transport was expected, not {transport!r}")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._replies.append(reply)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"the connection closed: {exc!r}"))

    def write(self, packed: bytes) -> None:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.transport.write(packed)

    async def next(self) -> Any:
        while not self._replies:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._replies.popleft()


class BareRoundTrip:
    """The floor of a process-channel round trip: a ``PUBLISH`` on one connection, its reply, and the message the
    server pushes on another, subscribed connection, on the same event loop, with no channel layer in between.

    A layer's round trip is this plus the layer's own work (checking, encoding, routing, decoding, handing the
    message to the receive), so a round trip less this floor is what the layer itself adds. Timed like
    :func:`round_trip`, the message's wait inside the same :data:`RECEIVE_TIMEOUT`; ``AssertionError`` unless the
    message comes back as published, to exactly one subscriber.
    """

    def __init__(self, publisher: _Replies, subscriber: _Replies, channel: bytes, payload: bytes) -> None:
        self._publisher = publisher
        self._subscriber = subscriber
        self._channel = channel
        self._payload = payload
        self._publish = pack_command((b"PUBLISH", channel, payload))

    @classmethod
    async def open(cls, host: str, port: int, channel: bytes, payload: bytes) -> BareRoundTrip:
        """Two connections to ``host:port``, the second subscribed to ``channel``."""
        loop = asyncio.get_running_loop()
        _, publisher = await loop.create_connection(_Replies, host, port)
        _, subscriber = await loop.create_connection(_Replies, host, port)
        subscriber.write(pack_command((b"SUBSCRIBE", channel)))
        confirmed = await subscriber.next()
        if confirmed != [b"subscribe", channel, 1]:
            raise AssertionError(f"SUBSCRIBE {channel!r} answered {confirmed!r}")
        return cls(publisher, subscriber, channel, payload)

    async def round_trip(self) -> float:
        """Seconds from publishing the payload to having it back on the subscribed connection."""
        start = time.perf_counter()
        self._publisher.write(self._publish)
        receivers = await self._publisher.next()
        async with timeout(RECEIVE_TIMEOUT):
            message = await self._subscriber.next()
        elapsed = time.perf_counter() - start
        if receivers != 1 or message != [b"message", self._channel, self._payload]:
            raise AssertionError(f"PUBLISH reached {receivers!r} subscribers, which got {message!r}")
        return elapsed

    def close(self) -> None:
        for connection in (self._publisher, self._subscriber):
            if connection.transport is not None:
                connection.transport.close()


@dataclass
class Fan:
    """A group and its members, each a (layer, channel) that receives on its own layer, and the numbers sent."""

    sender: Any
    members: list[tuple[Any, str]] = field(default_factory=list)
    group: str = GROUP
    #: The number the next group message gets.
    sent: int = 0

    @classmethod
    def of(cls, layer: Any, channels: Sequence[str], group: str = GROUP) -> Fan:
        """A group whose members are ``channels``, all received on ``layer``, which also sends."""
        return cls(layer, [(layer, channel) for channel in channels], group)


async def fan_out(fan: Fan) -> int:
    """One ``group_send``, then every member receives; how many got exactly that message.

    Each group message has the next number, and every member must receive that one: a message left over from an
    earlier round, or one delivered twice, arrives with the wrong number.
    """
    number = fan.sent
    fan.sent += 1
    await fan.sender.group_send(fan.group, numbered(number))
    arrived = await _each_receives(fan.members)
    wrong = {
        channel: _number(message)
        for (_, channel), message in zip(fan.members, arrived, strict=True)
        if message != numbered(number)
    }
    if wrong:
        shown = dict(list(wrong.items())[:3])
        raise AssertionError(
            f"group_send number {number} to {fan.group!r}: {len(wrong)} of {len(arrived)} members received "
            f"something else, such as {shown!r}"
        )
    return len(arrived)


class ReturnsAtOnce:
    """A stand-in for a layer whose ``receive`` returns at once: what a fan-out's timed receives cost by themselves."""

    async def receive(self, channel: str) -> dict[str, Any]:
        return numbered(0)


async def receives_alone(fan: Fan) -> float:
    """Seconds the gather of :func:`fan_out` takes for the fan's members with no layer behind the receives (each
    returns at once): the benchmark's own floor, which every layer pays on top of its delivery."""
    stand_in = ReturnsAtOnce()
    start = time.perf_counter()
    await _each_receives((stand_in, channel) for _, channel in fan.members)
    return time.perf_counter() - start


async def _each_receives(members: Iterable[tuple[Any, str]]) -> list[dict[str, Any]]:
    """Every member's next message, each received within the timeout, all at once: the work of a fan-out after its
    ``group_send``, and of its floor."""
    return await asyncio.gather(*(receive_within(layer, channel) for layer, channel in members))


@dataclass
class Rooms:
    """Many groups of one member each, the members a few channels of another layer than the sender's (websocket
    consumers of another process, each in many rooms), and the numbers sent and checked: group ``i``'s member is
    ``channels[i % len(channels)]``."""

    sender: Any
    members: Any
    groups: list[str]
    channels: list[str]
    #: The number the next group message gets.
    sent: int = 0
    #: The number of the first message the members have not checked yet.
    checked: int = 0


async def join_rooms(sender: Any, members: Any, groups: int, channels: int) -> Rooms:
    """``groups`` groups named ``bench-room{i}``, spread over ``channels`` new process channels of ``members``
    (run on the members' event loop), sent to by ``sender``."""
    made = [await members.new_channel() for _ in range(channels)]
    names = [f"bench-room{index}" for index in range(groups)]
    for index, group in enumerate(names):
        await members.group_add(group, made[index % channels])
    return Rooms(sender, members, names, made)


async def send_to_rooms(rooms: Rooms, *, bulk: bool) -> float:
    """One numbered message to every group from the sender, by one ``group_send_many`` (``bulk``) or a loop of
    ``group_send``; the seconds the sending took (run on the sender's event loop)."""
    layer, groups = rooms.sender, rooms.groups
    first = rooms.sent
    rooms.sent += len(groups)
    pairs = [(group, numbered(first + index)) for index, group in enumerate(groups)]
    start = time.perf_counter()
    if bulk:
        result = await layer.group_send_many(pairs)
    else:
        for group, message in pairs:
            await layer.group_send(group, message)
    elapsed = time.perf_counter() - start
    if bulk and (result.sent != len(pairs) or result.over_capacity):
        raise AssertionError(f"group_send_many of {len(pairs)} groups: {result!r}")
    return elapsed


async def check_rooms(rooms: Rooms) -> None:
    """Every member receives its groups' messages of the round sent since the last check, which must be those
    messages in order (``AssertionError`` otherwise); run on the members' event loop."""
    layer, groups, channels = rooms.members, rooms.groups, rooms.channels
    first, count = rooms.checked, rooms.sent - rooms.checked
    if count != len(groups):
        raise AssertionError(f"{count} messages sent since the last check, not one round of {len(groups)}")
    rooms.checked = rooms.sent

    async def member(place: int) -> None:
        wanted = [first + index for index in range(place, count, len(channels))]
        arrived = [_number(await receive_within(layer, channels[place])) for _ in wanted]
        if arrived != wanted:
            raise AssertionError(f"{channels[place]!r} received {arrived[:5]!r}..., not {wanted[:5]!r}...")

    await asyncio.gather(*(member(place) for place in range(len(channels))))
