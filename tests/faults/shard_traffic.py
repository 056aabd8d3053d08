"""The traffic of the shard-down fault test (imported as ``faults.shard_traffic``): measured round trips on the live
shards, and operations addressed to the victim all the time, recorded with when they ran and how they ended.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import valkey

from faults.shard_layout import Layout

#: What the layers raise for a shard that is down: ``ShardUnavailable`` and ``ReplyLost`` are ConnectionErrors.
LAYER_ERRORS = (valkey.ConnectionError, valkey.TimeoutError)
#: Operations addressed to the victim start this often, each in a task of its own: the same pace whether they
#: succeed at once or wait to fail.
PROBE_INTERVAL = 0.1
#: Longest a round trip or a receive waits for its message before it counts as lost or hung.
TRIP_TIMEOUT = 5.0
#: Longest an operation addressed to the victim may take before it counts as hung (and the test goes on).
HANG_TIMEOUT = 10.0
#: The Pub/Sub layer's notices: a channel with a subscription on a shard hears when it goes and when it is back.
NOTICES = {"on_disconnect": "shard.down", "on_reconnect": "shard.up"}


class WrongMessage(Exception):
    """A round trip received some other message than the one it sent."""


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest rank below)."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@dataclass
class Round:
    """One round of measured round trips on the live shards, with the victim up or down."""

    down: bool
    latencies: list[float]
    seconds: float
    errors: list[str]
    #: CPU time this process used meanwhile (the test's own background traffic included).
    cpu_seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p99(self) -> float:
        return quantile(self.latencies, 0.99)


def _trips(layer: Any, layout: Layout) -> list[Callable[[int], Coroutine[Any, Any, None]]]:
    """The measured operations, each one round trip: a send and its receive, or a group_send and every member's."""

    async def expect(channel: str, n: int) -> None:
        message = await asyncio.wait_for(layer.receive(channel), TRIP_TIMEOUT)
        if message.get("n") != n:
            raise WrongMessage(f"{channel} received {message!r}, not trip {n}")

    def round_trip(channel: str) -> Callable[[int], Coroutine[Any, Any, None]]:
        async def trip(n: int) -> None:
            await layer.send(channel, {"type": "trip", "n": n})
            await expect(channel, n)

        return trip

    async def group_trip(n: int) -> None:
        await layer.group_send(layout.group, {"type": "trip", "n": n})
        for member in layout.members:
            await expect(member, n)

    return [*(round_trip(channel) for channel in layout.live_channels), group_trip]


async def measure(
    layer: Any, layout: Layout, numbers: itertools.count[int], seconds: float, *, down: bool
) -> Round:
    """Round trips on the live shards, one after another, for ``seconds``; each one's time, or its error."""
    trips = _trips(layer, layout)
    latencies: list[float] = []
    errors: list[str] = []
    cpu = time.process_time()
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        for trip in trips:
            n = next(numbers)
            begun = time.monotonic()
            try:
                await trip(n)
            except (*LAYER_ERRORS, WrongMessage, asyncio.TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")
            else:
                latencies.append(time.monotonic() - begun)
    return Round(down, latencies, time.monotonic() - started, errors, time.process_time() - cpu)


@dataclass
class Attempt:
    """One operation addressed to the victim: what it was, when it ran, how it ended (``error`` None: done)."""

    kind: str
    started: float
    ended: float
    error: str | None
    #: Whether the error is one of :data:`LAYER_ERRORS`.
    layer_error: bool = True
    #: For a receive: when the send of the message it received started (a message popped before the victim died
    #: may be received from the process's own buffers after).
    sent: float | None = None


@dataclass
class Outage:
    """One kill of the victim: when it was dead, relaunched, answering again; how soon each operation was back."""

    killed: float
    relaunched: float
    answering: float
    back_after: dict[str, float] = field(default_factory=dict)


@dataclass
class VictimTraffic:
    """Operations addressed to the victim, whether it is up or down: a send and a ``group_send`` every
    :data:`PROBE_INTERVAL`, a receive loop on its channel, and a receive loop on the victim group's live member."""

    layer: Any
    layout: Layout
    attempts: list[Attempt] = field(default_factory=list)
    #: The victim group's messages by number: when each was sent and whether without an error.
    group_sends: dict[int, tuple[float, bool]] = field(default_factory=dict)
    #: When the send of each message to the victim's channel started, by number.
    sends: dict[int, float] = field(default_factory=dict)
    #: The numbers its live member received, and when that member heard its subscriptions were back (Pub/Sub).
    witnessed: set[int] = field(default_factory=set)
    restored: list[float] = field(default_factory=list)
    witness_errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Probe until :attr:`stop` is set; then wait for the probes, and stop the receive loops."""
        probes: set[asyncio.Task[None]] = set()
        consumers = [
            asyncio.create_task(self._consume_victim()),
            asyncio.create_task(self._consume_witness()),
        ]
        numbers = itertools.count()
        try:
            while not self.stop.is_set():
                n = next(numbers)
                for operation in (self._send(n), self._group_send(n)):
                    probe = asyncio.create_task(operation)
                    probes.add(probe)
                    probe.add_done_callback(probes.discard)
                await asyncio.sleep(PROBE_INTERVAL)  # the pace of the probes, not a wait for anything
        finally:
            await asyncio.gather(*probes)
            # A receive is safe to cancel (nothing is lost with it).
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

    async def _send(self, n: int) -> None:
        self.sends[n] = time.monotonic()
        await self._attempt("send", self.layer.send(self.layout.victim_channel, {"type": "probe", "n": n}))

    async def _group_send(self, n: int) -> None:
        started = time.monotonic()
        message = {"type": "probe.group", "n": n}
        acked = await self._attempt("group_send", self.layer.group_send(self.layout.victim_group, message))
        self.group_sends[n] = (started, acked)

    async def _attempt(self, kind: str, operation: Coroutine[Any, Any, Any]) -> bool:
        started = time.monotonic()
        try:
            await asyncio.wait_for(operation, HANG_TIMEOUT)
        except Exception as error:
            self._failed(kind, started, error)
            return False
        self.attempts.append(Attempt(kind, started, time.monotonic(), None))
        return True

    def _failed(self, kind: str, started: float, error: Exception) -> None:
        layer_error = isinstance(error, LAYER_ERRORS)
        self.attempts.append(Attempt(kind, started, time.monotonic(), type(error).__name__, layer_error))

    async def _consume_victim(self) -> None:
        """Receive on the victim's channel for as long as the test runs, as a worker would that pauses a moment
        after an error (each receive on a dead shard's queue spends its retry budget's connection attempts)."""
        while True:
            started = time.monotonic()
            try:
                message = await asyncio.wait_for(self.layer.receive(self.layout.victim_channel), TRIP_TIMEOUT)
            except Exception as error:  # a TimeoutError here is a receive that hung: sends come all the time
                self._failed("receive", started, error)
                await asyncio.sleep(PROBE_INTERVAL)  # the worker's pause, not a wait for anything
                continue
            if message["type"] not in NOTICES.values():  # a notice tells what happened; it is no message
                sent = self.sends.get(message.get("n", -1))
                self.attempts.append(Attempt("receive", started, time.monotonic(), None, sent=sent))

    async def _consume_witness(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.layout.witness)
            except Exception as error:
                self.witness_errors.append(type(error).__name__)
                continue
            if message["type"] == NOTICES["on_reconnect"]:
                self.restored.append(time.monotonic())
            elif "n" in message:
                self.witnessed.add(message["n"])

    def first_success(self, kind: str, after: float) -> float | None:
        """When the first ``kind`` operation started after ``after`` succeeded (None: none yet)."""
        ended = [a.ended for a in self.attempts if a.kind == kind and a.error is None and a.started >= after]
        return min(ended, default=None)

    def expected(self, spans: bool, outages: list[Outage]) -> set[int]:
        """The victim group's messages its live member must have received. Core (the group spans the shards):
        all, since each ``group_send`` delivers to the members of the shards that answer. Pub/Sub: those sent
        without an error, except the ones sent between a kill and the moment the member's subscriptions were
        restored, which Pub/Sub delivered to nobody (it keeps nothing, and the notices say so)."""
        if spans:
            return set(self.group_sends)
        gaps = [
            (o.killed, min((t for t in self.restored if t > o.killed), default=float("inf"))) for o in outages
        ]
        return {
            n
            for n, (started, acked) in self.group_sends.items()
            if acked and not any(begin <= started < end for begin, end in gaps)
        }
