"""Counters of a channel layer's messages: sent and received by channel kind, dropped on purpose by reason.

One set of classes for both layers, so monitoring reads the same fields from either; a reason a layer never drops
for stays 0 there (each layer's README names the reasons it uses). Counting is an integer increment on the paths it
counts, so the layers pay nothing measurable for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from channels_valkey.sentinel.histograms import Distribution
from channels_valkey.sentinel.restarts import ServerRuns

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionFigures

__all__ = ["DropCounters", "MessageCounts", "ShardCounts", "layer_stats"]

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


class MessageCounts:
    """Messages a layer instance sent and received since it was made, by kind of channel, and how long the queued
    ones waited and how far group messages fanned out (see :mod:`~channels_valkey.sentinel.histograms`)."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        #: Sends that succeeded (a ``group_send`` counts once, under ``group``).
        self.sent: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Messages handed to a ``receive()`` (a group's message counts under the kind of the member channel).
        self.received: dict[str, int] = dict.fromkeys(KINDS[:2], 0)
        #: Seconds from send to receive of the messages that travelled in a queue, by channel kind.
        self.waited = {kind: Distribution("channels_valkey.message.wait") for kind in KINDS[:2]}
        #: Member channels reached per group message.
        self.fanout = Distribution("channels_valkey.group.fanout")


class ShardCounts:
    """What one shard's connections went through in this process, over every event loop."""

    def __init__(self) -> None:
        #: Connection failures after which the layer connected again (commands, queue readers, Pub/Sub listeners).
        self.reconnects = 0
        #: Times the shard's primary moved and the layer followed: a Sentinel ``+switch-master``, or a cluster slot
        #: map naming other primaries. Each move counts once, however many event loops follow it.
        self.failovers = 0
        #: The ``run_id`` of the shard's server(s), checked after connection failures (see restarts.py).
        self.runs = ServerRuns()
        self._lock = threading.Lock()
        self._switched_to: object = None
        self._primaries: frozenset[object] | None = None

    @property
    def restarts(self) -> int:
        """Times the shard's server came back as a new process at the same address: what it held was lost then.
        Each restart counts once, however many event loops reconnected to it."""
        return self.runs.restarts

    def reconnected(self) -> None:
        """Count one reconnection (a retry after a connection failure, a lost Pub/Sub or tracking connection)."""
        self.reconnects += 1
        self.runs.connection_failed()

    def switched_to(self, address: object) -> None:
        """Sentinels announced ``address`` as the new primary (every loop's watcher reports the same switch)."""
        with self._lock:
            if address != self._switched_to:
                self._switched_to = address
                self.failovers += 1

    def primaries_are(self, addresses: Iterable[object]) -> None:
        """A slot map was read: a set of primaries other than the last one seen is a failover followed."""
        seen = frozenset(addresses)
        with self._lock:
            if self._primaries is not None and seen != self._primaries:
                self.failovers += 1
            self._primaries = seen


def layer_stats(
    counts: MessageCounts,
    drops: DropCounters,
    held: dict[str, int],
    shards: dict[int, ConnectionFigures],
) -> dict[str, Any]:
    """The snapshot a layer's ``stats()`` returns: plain, JSON-serialisable, the same keys for both layers.

    ``held`` is what the layer keeps in this process now, by kind, not yet received; ``shards`` the connections and
    the counts of each shard, by index (``ConnectionManager.connection_figures()``).
    """
    return {
        "layer": counts.layer,
        "sent": dict(counts.sent),
        "received": dict(counts.received),
        "dropped": drops.as_dict(),
        "held": dict(held),
        "waited": {kind: distribution.snapshot() for kind, distribution in counts.waited.items()},
        "fanout": counts.fanout.snapshot(),
        "shards": {
            str(index): {
                "open_connections": figures.open,
                "parked_connections": figures.parked,
                "reconnects": figures.counts.reconnects,
                "failovers": figures.counts.failovers,
                "restarts": figures.counts.restarts,
            }
            for index, figures in sorted(shards.items())
        },
    }
