"""The cases ``channels-valkey bench`` measures: how each makes a layer ready, times one round, and sums up.

A smaller, self-contained version of the pytest-benchmark suites in benchmarks/core and benchmarks/pubsub: the same
message and the same flows, each case reduced to one figure that both sides produce the same way. A case first
prepares a layer (channels opened, group joined, a warm-up so that connections, scripts and readers are in place),
then times rounds one at a time, so that the runner can let the two sides take turns. Every round checks what it
received: a layer that loses or garbles messages fails instead of looking fast.
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels_valkey.cli.measure.exceptions import CaseFailed
from channels_valkey.cli.measure.flows import (
    GROUP,
    fan_out,
    produce_and_consume,
    round_trip,
    send_receive_pairs,
)

#: The normal channel of the core layer's throughput cases.
QUEUE = "bench.queue"
#: Members of the group in the group_send cases: the consumers of one busy chat room in one process.
MEMBERS = 100
#: Messages moved while preparing, before any round is timed.
WARMUP = 20

#: One timed round on a prepared layer: it returns the seconds the round took.
Round = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class Sizes:
    """How much work each case does: the default run is steadier, ``--quick`` a smoke test of a few seconds."""

    #: Messages per timed round of the throughput cases.
    messages: int
    #: Timed rounds of the throughput cases.
    rounds: int
    #: Timed round trips of the latency cases.
    round_trips: int
    #: Timed group_sends of the group cases: each takes a few milliseconds, so many are needed for a steady median.
    fan_outs: int


FULL = Sizes(messages=500, rounds=5, round_trips=500, fan_outs=30)
QUICK = Sizes(messages=50, rounds=2, round_trips=50, fan_outs=5)


@dataclass(frozen=True)
class Case(ABC):
    """One comparison row: a figure of one layer, measured the same way on both sides."""

    layer: str
    name: str
    unit: str
    higher_is_better: bool
    #: Rounds one side runs before the other takes its turn: short rounds go in blocks, so that the work a layer
    #: leaves in the background after a round (channels_redis cleans up its in-flight backups in tasks) weighs on
    #: that layer's own next rounds, not on the other side's.
    turn: int = 1

    @property
    def title(self) -> str:
        return f"{self.layer} {self.name}"

    @abstractmethod
    async def prepare(self, layer: Any, sizes: Sizes) -> Round:
        """Make ``layer`` ready for this case and return its timed round."""

    @abstractmethod
    def rounds(self, sizes: Sizes) -> int:
        """How many rounds each side runs."""

    @abstractmethod
    def figure(self, seconds: list[float], sizes: Sizes) -> float:
        """The case's figure, from the seconds of one side's rounds."""


def _expect(intact: int, wanted: int, what: str) -> None:
    if intact != wanted:
        raise CaseFailed(f"{what}: {intact} of {wanted} messages arrived intact")


@dataclass(frozen=True)
class Throughput(Case):
    """Messages/s of send and receive on one channel: one after the other, or a sender and a receiver at once."""

    process_channel: bool = False
    concurrent: bool = False

    async def prepare(self, layer: Any, sizes: Sizes) -> Round:
        channel = str(await layer.new_channel()) if self.process_channel else QUEUE
        flow = produce_and_consume if self.concurrent else send_receive_pairs
        _expect(await flow(layer, channel, WARMUP), WARMUP, "warm-up")

        async def one_round() -> float:
            start = time.perf_counter()
            intact = await flow(layer, channel, sizes.messages)
            elapsed = time.perf_counter() - start
            _expect(intact, sizes.messages, "timed round")
            return elapsed

        return one_round

    def rounds(self, sizes: Sizes) -> int:
        return sizes.rounds

    def figure(self, seconds: list[float], sizes: Sizes) -> float:
        return sizes.messages / statistics.median(seconds)


@dataclass(frozen=True)
class RoundTrip(Case):
    """Median microseconds from sending to a process channel to having received the message."""

    async def prepare(self, layer: Any, sizes: Sizes) -> Round:
        channel = str(await layer.new_channel())
        _expect(await send_receive_pairs(layer, channel, WARMUP), WARMUP, "warm-up")

        async def one_round() -> float:
            elapsed, intact = await round_trip(layer, channel)
            _expect(int(intact), 1, "round trip")
            return elapsed

        return one_round

    def rounds(self, sizes: Sizes) -> int:
        return sizes.round_trips

    def figure(self, seconds: list[float], sizes: Sizes) -> float:
        return statistics.median(seconds) * 1e6


@dataclass(frozen=True)
class GroupSend(Case):
    """Deliveries/s of one group_send to MEMBERS process channels, each of which receives it."""

    async def prepare(self, layer: Any, sizes: Sizes) -> Round:
        channels = [str(await layer.new_channel()) for _ in range(MEMBERS)]
        for channel in channels:
            await layer.group_add(GROUP, channel)
        _expect(await fan_out(layer, channels), MEMBERS, "warm-up")

        async def one_round() -> float:
            start = time.perf_counter()
            intact = await fan_out(layer, channels)
            elapsed = time.perf_counter() - start
            _expect(intact, MEMBERS, "timed round")
            return elapsed

        return one_round

    def rounds(self, sizes: Sizes) -> int:
        return sizes.fan_outs

    def figure(self, seconds: list[float], sizes: Sizes) -> float:
        return MEMBERS / statistics.median(seconds)


#: Every case, in the order the table shows them. The Pub/Sub layer's throughput runs on process channels: its
#: normal channels are queues on our side and Pub/Sub on the peer's, which is not the same work.
CASES: tuple[Case, ...] = (
    Throughput("core", "send+receive sequential", "messages/s", True),
    Throughput("core", "send+receive concurrent", "messages/s", True, concurrent=True),
    RoundTrip("core", "process round trip p50", "us", False, turn=25),
    GroupSend("core", f"group_send to {MEMBERS} members", "deliveries/s", True, turn=5),
    Throughput("pubsub", "send+receive sequential", "messages/s", True, process_channel=True),
    Throughput(
        "pubsub", "send+receive concurrent", "messages/s", True, process_channel=True, concurrent=True
    ),
    RoundTrip("pubsub", "process round trip p50", "us", False, turn=25),
    GroupSend("pubsub", f"group_send to {MEMBERS} members", "deliveries/s", True, turn=5),
)


def cases_of(layers: tuple[str, ...]) -> list[Case]:
    """The cases of the given layers, in table order."""
    return [case for case in CASES if case.layer in layers]
