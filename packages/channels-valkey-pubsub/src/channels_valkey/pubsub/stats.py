"""Counters of messages the layer dropped on purpose, so that nothing is lost silently."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class DropCounters:
    """How many messages were dropped, by reason; each drop is also logged on ``channels_valkey.pubsub``."""

    #: Older than ``expiry``: waiting in a local buffer, in a worker queue, or in the buffer of a channel that
    #: was dropped because nobody received from it for ``expiry`` seconds.
    expired: int = 0
    #: Not readable: truncated, foreign, undecryptable bytes.
    undecodable: int = 0
    #: A channel's local buffer was full (its capacity); the oldest message made room.
    buffer_overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
