"""The shard ring places every name on the same shard as channels_redis 4 and channels-valkey 0.3."""

from __future__ import annotations

import random
import zlib

import pytest
from channels_redis.utils import _consistent_hash as peer_hash

from channels_valkey.sentinel.ring import BUCKETS, ShardRing, consistent_hash


def _names() -> list[str | bytes]:
    """A few thousand names shaped like the layers' keys, with non-ASCII and raw bytes among them."""
    rng = random.Random(20240607)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789._-!ßüéçøあチャット中文😀"
    names: list[str | bytes] = ["", "!", "asgi:group:chat", "specific.abc!", "websocket.send!x" * 6]
    names += [f"specific.{index:032x}!" for index in range(1000)]
    names += [f"asgi:group:room-{index}" for index in range(1000)]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    names += [rng.randbytes(rng.randint(0, 32)) for _ in range(500)]
    return names


NAMES = _names()


def _name_per_bucket() -> dict[int, str]:
    """One name for each of the 4096 buckets, so every bucket can be checked against the peer."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < BUCKETS:
        name = f"channel-{index}"
        found.setdefault(zlib.crc32(name.encode()) & (BUCKETS - 1), name)
        index += 1
    return found


@pytest.mark.parametrize("ring_size", range(1, 17))
def test_same_shard_as_the_peer_for_every_name(ring_size: int) -> None:
    ring = ShardRing(ring_size)
    for name in NAMES:
        expected = peer_hash(name, ring_size)
        assert consistent_hash(name, ring_size) == expected, name
        assert ring.index(name) == expected, name
        assert 0 <= expected < ring_size


# From 186 shards on, the peers' float division and exact integer scaling disagree on a few buckets.
@pytest.mark.parametrize("ring_size", [17, 100, 185, 186, 198, 300, 372, 600, 1000, 4095, 4096, 4097, 10_000])
def test_same_shard_as_the_peer_for_every_bucket(ring_size: int) -> None:
    ring = ShardRing(ring_size)
    for name in _name_per_bucket().values():
        expected = peer_hash(name, ring_size)
        assert consistent_hash(name, ring_size) == expected, name
        assert ring.index(name) == expected, name


def test_the_float_rounding_of_the_peers_is_kept() -> None:
    """Bucket 2048 on 186 shards: exact scaling gives shard 93, the peers (and we) give 92."""
    name = "n2203"
    assert zlib.crc32(name.encode()) & 0xFFF == 2048
    assert (2048 * 186) // BUCKETS == 93
    assert consistent_hash(name, 186) == ShardRing(186).index(name) == 92


# Pinned values: placement must never drift, whatever a future peer release does.
VECTORS = [
    ("asgi:group:chat", 2, 1),
    ("asgi:group:chat", 16, 11),
    ("specific.a1b2c3!", 5, 4),
    ("specific.a1b2c3!", 7, 6),
    ("websocket.send", 3, 1),
    ("websocket.send", 16, 9),
    ("group.ünïcødé", 5, 4),
    ("チャット", 7, 2),
    ("emoji-😀", 16, 15),
    ("", 16, 0),
    (b"\x00\xffraw", 5, 1),
    (b"\x00\xffraw", 16, 3),
    ("n2203", 186, 92),
]


@pytest.mark.parametrize(("name", "ring_size", "expected"), VECTORS)
def test_pinned_vectors(name: str | bytes, ring_size: int, expected: int) -> None:
    assert consistent_hash(name, ring_size) == expected
    assert ShardRing(ring_size).index(name) == expected


def test_str_is_hashed_as_its_utf8_bytes() -> None:
    for name in ["plain", "ünïcødé", "チャット😀"]:
        assert consistent_hash(name, 7) == consistent_hash(name.encode("utf-8"), 7)


def test_one_shard_needs_no_hashing_like_the_peer() -> None:
    unencodable = "\ud800"  # a lone surrogate: the peers return 0 without encoding it
    assert peer_hash(unencodable, 1) == 0
    assert consistent_hash(unencodable, 1) == 0
    assert ShardRing(1).index(unencodable) == 0


@pytest.mark.parametrize("ring_size", [0, -1])
def test_ring_size_below_one_is_refused(ring_size: int) -> None:
    with pytest.raises(ValueError, match=f"ring_size must be at least 1.*got {ring_size}"):
        consistent_hash("name", ring_size)
    with pytest.raises(ValueError, match="ring_size must be at least 1"):
        ShardRing(ring_size)


@pytest.mark.parametrize("ring_size", [2.0, "2", True, None])
def test_ring_size_must_be_an_int(ring_size: object) -> None:
    with pytest.raises(TypeError, match="ring_size must be an int"):
        consistent_hash("name", ring_size)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ring_size must be an int"):
        ShardRing(ring_size)  # type: ignore[arg-type]


def test_ring_reports_its_size() -> None:
    ring = ShardRing(3)
    assert len(ring) == ring.size == 3
    assert repr(ring) == "ShardRing(size=3)"


def test_every_shard_gets_names() -> None:
    """The spread is the peers', but no shard of a small ring is left empty by it."""
    for ring_size in range(1, 17):
        ring = ShardRing(ring_size)
        assert {ring.index(name) for name in NAMES} == set(range(ring_size))
