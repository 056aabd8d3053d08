"""Counters of a channel layer's messages: sent and received by channel kind, dropped on purpose by reason.

One set of classes for both layers, so monitoring reads the same fields from either; a reason a layer never drops
for stays 0 there (each layer's README names the reasons it uses). Counting is an integer increment on the paths it
counts, so the layers pay nothing measurable for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DropCounters", "MessageCounts", "layer_stats"]

#: The kinds of channel messages are counted by: a normal (worker) channel, a process channel (``name!suffix``),
#: or a group (one ``group_send``, however many members it reached).
KINDS = ("normal", "process", "group")


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


@dataclass
class MessageCounts:
    """Messages a layer instance sent and received since it was made, by kind of channel."""

    #: Sends that succeeded (a ``group_send`` counts once, under ``group``).
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: Messages handed to a ``receive()`` (a group's message counts under the kind of the member channel).
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS[:2], 0))


def layer_stats(
    layer: str, counts: MessageCounts, drops: DropCounters, held: dict[str, int]
) -> dict[str, Any]:
    """The snapshot a layer's ``stats()`` returns: plain, JSON-serialisable, the same keys for both layers.

    ``held`` is what the layer keeps in this process now, by kind, not yet received.
    """
    return {
        "layer": layer,
        "sent": dict(counts.sent),
        "received": dict(counts.received),
        "dropped": drops.as_dict(),
        "held": dict(held),
    }
