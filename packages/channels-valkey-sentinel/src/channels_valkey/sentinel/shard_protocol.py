"""What every shard offers, whether it is one server or a whole Valkey Cluster.

A host entry becomes a :class:`~channels_valkey.sentinel.Shard` (one server, plain or followed through Sentinel) or
a :class:`~channels_valkey.sentinel.ClusterShard` (a cluster reached through its startup nodes, seen as one shard
whose keys the cluster places). The layers and :class:`~channels_valkey.sentinel.ConnectionManager` hold either
through :class:`ShardConnection`, so they send, block, retry and close without asking which kind they have. What
only a server can give (its own clients and pools) is reached through :meth:`ShardConnection.single_server`, which a
cluster answers with None.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from channels_valkey.sentinel.blocking import OnInterrupted

if TYPE_CHECKING:
    from channels_valkey.sentinel.counters import ShardCounts
    from channels_valkey.sentinel.shard import Shard
    from channels_valkey.sentinel.tracking_lane import Doorbell, OnOrphaned


class ShardConnection(Protocol):
    """One shard's connections on one event loop, as the layers use them.

    Implemented by :class:`~channels_valkey.sentinel.Shard` and :class:`~channels_valkey.sentinel.ClusterShard`.
    Commands sent here get no retries: :class:`~channels_valkey.sentinel.ConnectionManager` wraps them in its
    policy, which is why the retry state (:attr:`ever_connected`, :meth:`reset`, :meth:`stop_health_checks`) is
    part of the protocol too.
    """

    #: The shard's position in the ring (0 for a cluster, the only entry).
    index: int
    #: True once any command on this shard has succeeded: until then failures are configuration errors, not outages.
    ever_connected: bool
    #: Reconnections, failovers followed and server restarts noticed, shared by the shards of this index on every
    #: event loop.
    counts: ShardCounts

    def describe(self) -> str:
        """The shard for log and error messages: its index and its host entry, passwords masked."""

    def open_connections(self) -> int:
        """Connections open to the shard's server(s) on this loop now; safe to call from another thread."""

    def execute_command(self, *args: Any) -> Awaitable[Any]:
        """Send one command on a pipelined command lane and return its raw reply (no valkey-py callbacks).

        A server shard writes it on its own lane; a cluster routes it by its (first) key to the primary of that
        key's slot, following ``MOVED`` and ``ASK``. Declared as returning an awaitable rather than as a coroutine
        function: :class:`~channels_valkey.sentinel.Shard` hands out its lane's method itself, the hot path of
        every send.
        """

    async def blocking_call(self, args: Sequence[object], on_interrupted: OnInterrupted) -> object:
        """Run a blocking command (``BZPOPMIN key 5``...) on a connection of its own, safe to cancel.

        What a cancelled caller's command popped goes to ``on_interrupted`` rather than being lost. On a cluster the
        command goes to the primary of its key.
        """

    async def tracked_call(self, args: Sequence[object], bell: Doorbell, on_orphaned: OnOrphaned) -> object:
        """Run a queue reader's pop script (``EVALSHA sha 2 queue receipt ...``) on the tracking lane of the queue's
        server, with ``bell`` armed on the queue (see tracking_lane.py); if the caller is cancelled, the reply's
        future goes to ``on_orphaned`` once done. On a cluster, a slot being migrated answers None after a short
        wait: the caller asks again."""

    async def primaries(self) -> list[Shard]:
        """The server shards holding this shard's keys: itself, or every primary of a cluster that owns slots now."""

    async def owner(self, key: str | bytes) -> Shard:
        """The server shard holding ``key``: itself, or the primary owning ``key``'s slot as far as the map knows."""

    def single_server(self) -> Shard | None:
        """This shard when it is one server; None for a cluster, whose keys live on several (see :meth:`owner`).

        For what needs one server's own clients (``ConnectionManager.client()``, a Pub/Sub subscriber connection).
        """

    def suspect_map(self) -> None:
        """Where keys live may have changed: a cluster reads its slot map again before the next command. A server
        shard has no map (a Sentinel shard follows failovers by itself), so it does nothing."""

    def stop_health_checks(self, *, quietly: bool = False) -> None:
        """Stop PING health checks on every connection of the shard (its ACL refuses ``PING``); ``quietly``: no
        warning."""

    async def reset(self) -> None:
        """A server said it is no primary: a server shard drops its connections (a Sentinel shard asks the
        Sentinels again on reconnecting); a cluster reads its slot map again."""

    async def aclose(self, *, park: bool = False) -> None:
        """Close every connection of the shard (and a Sentinel shard's watcher); ``park``: its loop is closing,
        and the sockets of idle command connections to plain servers are kept for the next loop (parking.py)."""
