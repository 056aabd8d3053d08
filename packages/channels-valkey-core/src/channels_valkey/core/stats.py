"""Counters of messages the layer dropped on purpose, so that nothing is lost silently."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class DropCounters:
    """How many messages were dropped, by reason; each drop is also logged."""

    #: Older than ``expiry`` when popped from the server or while waiting in a local buffer.
    expired: int = 0
    #: Not readable: truncated, foreign, undecryptable, past the encryption TTL, or naming no channel.
    undecodable: int = 0
    #: ``group_send`` found a member's queue at capacity (``send`` raises ChannelFull instead).
    group_over_capacity: int = 0
    #: A process channel's local buffer was full; its oldest message made room.
    buffer_overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
