"""Placement of channel and group names on the shards of a layer.

A name goes to the same shard as with channels-valkey 0.3 and channels_redis 4: CRC32 of its UTF-8 bytes, cut
to 4096 buckets, the buckets spread over the shards. Processes running either implementation against the same
servers must agree on this, so the arithmetic is the peers' own, float division included: from 186 shards on,
exact integer scaling would put a few buckets on the neighbouring shard.
"""

from __future__ import annotations

from zlib import crc32

#: Number of buckets a name hashes to before the buckets are spread over the shards.
BUCKETS = 4096
_BUCKET_MASK = BUCKETS - 1


def _check_size(ring_size: int) -> None:
    if isinstance(ring_size, bool) or not isinstance(ring_size, int):
        raise TypeError(f"ring_size must be an int, got {ring_size!r}")
    if ring_size < 1:
        raise ValueError(f"ring_size must be at least 1 (the number of shards), got {ring_size}")


def _shard_of_bucket(bucket: int, ring_size: int) -> int:
    # The peers divide by a float divisor; keep that exact operation so rounding matches for every ring size.
    return int(bucket / (BUCKETS / ring_size))


def consistent_hash(value: str | bytes, ring_size: int) -> int:
    """The shard (``0 <= index < ring_size``) of a channel or group name, as the peer layers compute it."""
    _check_size(ring_size)
    if ring_size == 1:
        return 0
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _shard_of_bucket(crc32(data) & _BUCKET_MASK, ring_size)


class ShardRing:
    """The shards of one layer; ``index(name)`` is :func:`consistent_hash` with a bucket table built once."""

    __slots__ = ("_table", "size")

    def __init__(self, size: int) -> None:
        _check_size(size)
        self.size = size
        self._table = tuple(_shard_of_bucket(bucket, size) for bucket in range(BUCKETS))

    def index(self, name: str | bytes) -> int:
        """The shard index of ``name``; equal to ``consistent_hash(name, self.size)``."""
        if self.size == 1:
            return 0
        data = name.encode("utf-8") if isinstance(name, str) else name
        return self._table[crc32(data) & _BUCKET_MASK]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"ShardRing(size={self.size})"
