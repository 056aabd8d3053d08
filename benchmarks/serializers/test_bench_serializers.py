"""serialize + deserialize, ours side by side with channels_redis 4, for the messages issue #3 names.

Run: ``hatch run bench:run benchmarks/serializers``. Each group holds the same work done by both
implementations, built the way the core layer builds its serializer (12-byte random prefix, expiry 60, and one
key when encrypted); the ratio table at the end of the run comes from conftest.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from channels_redis import serializers as peer

from channels_valkey import serializers as ours

KEY = ["a-benchmark-secret"]


def small_message() -> dict[str, Any]:
    """A chat message of 100 bytes in msgpack."""
    message = {"type": "chat.message", "room": "lobby", "user": 4213, "text": "x" * 55}
    assert len(ours.MsgPackSerializer.as_bytes(message)) == 100
    return message


def blob_message() -> dict[str, Any]:
    """One megabyte of binary payload, as a websocket.send with bytes carries it."""
    return {"type": "websocket.send", "bytes": random.Random(3).randbytes(1 << 20)}


def structured_message() -> dict[str, Any]:
    """About one megabyte of many small dicts: the shape of a history or a bulk update."""
    items = [
        {
            "id": index,
            "user": f"user{index % 97}",
            "text": "lorem ipsum dolor sit amet " * 2,
            "at": 1.7e9 + index,
        }
        for index in range(8_800)
    ]
    return {"type": "chat.history", "items": items}


# Built once, at import: a large message made inside a test lands somewhere else in the heap for each test, and
# where it lands changes what every later allocation costs (whether freed memory goes back to the system and
# has to be faulted in again). Made up front, every test works against the same heap.
SMALL, BLOB, STRUCTURED = small_message(), blob_message(), structured_message()
MESSAGES = {
    "msgpack 100 B": ("msgpack", SMALL),
    "msgpack 1 MB bytes": ("msgpack", BLOB),
    "msgpack 1 MB structured": ("msgpack", STRUCTURED),
    "json 100 B": ("json", SMALL),
    "json 1 MB structured": ("json", STRUCTURED),
}
CASES = [
    pytest.param(name, encrypted, side, id=f"{name}-{'encrypted' if encrypted else 'plain'}-{side}")
    for name in MESSAGES
    for encrypted in (False, True)
    for side in ("ours", "channels_redis")
]


# CPU time, not wall time: the serializers do no I/O, and on a shared machine CPU time keeps other processes'
# work out of the comparison. Reading that clock costs close to a microsecond here, so each round runs the
# function enough times to last at least half a millisecond, which makes the clock's own cost negligible.
@pytest.mark.benchmark(timer=time.process_time, min_time=0.0005, min_rounds=20, max_time=2.0)
@pytest.mark.parametrize(("name", "encrypted", "side"), CASES)
def test_serialize_then_deserialize(
    measure: Any, benchmark: Any, name: str, encrypted: bool, side: str
) -> None:
    fmt, message = MESSAGES[name]
    settings = {
        "random_prefix_length": 12,
        "expiry": 60,
        "symmetric_encryption_keys": KEY if encrypted else None,
    }
    mine, theirs = (
        ours.registry.get_serializer(fmt, **settings),
        peer.registry.get_serializer(fmt, **settings),
    )
    serializer = mine if side == "ours" else theirs
    # Both sides run a few times first, whichever is measured, so both meet the same heap.
    for _ in range(3):
        for warm in (mine, theirs):
            warm.deserialize(warm.serialize(message))
    benchmark.group = f"{name} {'encrypted' if encrypted else 'plain'}"
    benchmark.extra_info["size"] = len(serializer.serialize(message))

    result = measure(side, lambda: serializer.deserialize(serializer.serialize(message)))
    assert result == message
