"""The message flows every speed comparison runs: ``channels-valkey bench`` and the pytest-benchmark suites in
benchmarks/ both time these, so that their figures mean the same thing.

Each flow checks what it received and returns how many messages came back intact: a layer that loses or garbles
messages shows it instead of looking fast. They take any channel layer (ours or a peer's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

#: A chat message of about 100 bytes in msgpack.
MESSAGE = {"type": "chat.message", "room": "lobby", "user": 4213, "text": "x" * 55}
#: The group of the fan-out flows.
GROUP = "bench-room"


async def send_receive_pairs(layer: Any, channel: str, count: int) -> int:
    """Send one message and receive it, ``count`` times; how many came back intact."""
    intact = 0
    for _ in range(count):
        await layer.send(channel, MESSAGE)
        intact += await layer.receive(channel) == MESSAGE
    return intact


async def produce_and_consume(layer: Any, channel: str, count: int) -> int:
    """One task sends ``count`` messages while another receives them; how many came intact."""

    async def produce() -> None:
        for _ in range(count):
            await layer.send(channel, MESSAGE)

    async def consume() -> int:
        return sum([await layer.receive(channel) == MESSAGE for _ in range(count)])

    _, intact = await asyncio.gather(produce(), consume())
    return int(intact)


async def round_trip(layer: Any, channel: str) -> tuple[float, bool]:
    """Seconds from sending one message to ``channel`` to having received it, and whether it came intact."""
    start = time.perf_counter()
    await layer.send(channel, MESSAGE)
    message = await layer.receive(channel)
    return time.perf_counter() - start, message == MESSAGE


async def fan_out(layer: Any, channels: Sequence[str], group: str = GROUP) -> int:
    """One ``group_send`` to ``group``, then every member in ``channels`` receives; how many came intact."""
    await layer.group_send(group, MESSAGE)
    messages = await asyncio.gather(*(layer.receive(channel) for channel in channels))
    return sum(message == MESSAGE for message in messages)
