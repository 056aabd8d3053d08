"""Counters of messages a channel layer dropped on purpose, so that nothing is lost silently.

One class for both layers, so monitoring reads the same fields from either; a reason a layer never drops for
stays 0 there (each layer's README names the reasons it uses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DropCounters"]


@dataclass
class DropCounters:
    """How many messages were dropped, by reason; each drop is also logged on the layer's logger."""

    #: Older than ``expiry``: popped from a server queue, or waiting in a local buffer (or in the buffer of a
    #: channel dropped because nobody received from it for ``expiry`` seconds).
    expired: int = 0
    #: Not readable: truncated, foreign, undecryptable, past the encryption TTL, or naming no channel.
    undecodable: int = 0
    #: ``group_send`` found a member's queue at capacity (``send`` raises ChannelFull instead). Core layer only:
    #: the Pub/Sub layer publishes a group's messages and has no member queues.
    group_over_capacity: int = 0
    #: A channel's local buffer was full (its capacity); its oldest message made room.
    buffer_overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by reason, for logs and metrics."""
        return asdict(self)
