"""Noticing that a shard's server restarted, so that the loss it means is reported rather than silent.

A server without persistence comes back from ``kill -9`` (or any restart) empty: the messages queued in it and the
group memberships it kept are gone, and a reconnection looks like any other (a group fills again only as its
consumers reconnect and add themselves). The one sign is the server's ``run_id`` (``INFO server``), new at every
start. So each shard remembers its server's ``run_id``, learned once per process at the first connection (shared by
every event loop, like :class:`~channels_valkey.sentinel.ShardCounts`), and asks again only on a fresh connection
made after one of its connections failed. A different ``run_id`` at the same address is a restart: one WARNING
naming the shard, and ``restarts`` counted (``stats()``, the ``channels_valkey.server.restarts`` metric). At
another address it is a failover, which the Sentinel watcher or the cluster's slot map count; it only becomes the
new baseline.

What it costs: one ``INFO`` on a connection just opened, before anyone uses it, and only then; never one per event
loop (an ``async_to_sync`` call runs on a loop of its own) nor on the path of a message. A server whose ACL refuses
``INFO``, or that does not know it, turns the check off for the shard with a debug log: no call fails for it. A
connection that fails while it is asked fails as it would in its handshake, for the caller to retry.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Hashable

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["CheckedPool", "RunCheck", "ServerRuns"]

logger = logging.getLogger("channels_valkey.sentinel")


class ServerRuns:
    """The ``run_id`` of each server of one shard as last seen in this process, and the restarts that showed.

    Safe to use from every event loop's thread. A plain or Sentinel-followed shard has one server (its key is the
    shard's); a cluster has one per node, keyed by the node's address.
    """

    def __init__(self) -> None:
        #: Restarts noticed: a ``run_id`` that changed while the address did not.
        self.restarts = 0
        #: The check is off for the shard: its servers refuse or do not know ``INFO``.
        self.off = False
        self._lock = threading.Lock()
        #: Connection failures seen on the shard so far; a server asked before the latest one is asked again.
        self._failures = 0
        #: Per server: the failure count its ``run_id`` was last read at.
        self._read_at: dict[Hashable, int] = {}
        #: Per server: the address and ``run_id`` last read.
        self._seen: dict[Hashable, tuple[object, str]] = {}
        #: Servers being asked now (by some loop): a second fresh connection does not ask as well.
        self._asking: set[Hashable] = set()

    def connection_failed(self) -> None:
        """A connection to the shard failed: the next fresh connection to each of its servers asks again."""
        with self._lock:
            self._failures += 1

    def begin(self, server: Hashable) -> int | None:
        """Whether to ask ``server`` its ``run_id`` now: the failure count the answer will stand for, or None."""
        with self._lock:
            if self.off or server in self._asking or self._read_at.get(server, -1) >= self._failures:
                return None
            self._asking.add(server)
            return self._failures

    def answered(self, server: Hashable, failures: int, address: object, run_id: str) -> str | None:
        """Record what ``server`` answered; the ``run_id`` it replaced when that means a restart, else None."""
        with self._lock:
            self._asking.discard(server)
            self._read_at[server] = failures
            previous = self._seen.get(server)
            self._seen[server] = (address, run_id)
            if previous is None or previous[0] != address or previous[1] == run_id:
                return None
            self.restarts += 1
            return previous[1]

    def unanswered(self, server: Hashable) -> None:
        """The connection failed before ``server`` answered: the next fresh connection asks."""
        with self._lock:
            self._asking.discard(server)

    def turn_off(self) -> None:
        """The shard's servers will not say: no more checks (restarts go unnoticed there)."""
        with self._lock:
            self.off = True
            self._asking.clear()


class RunCheck:
    """What one pool needs to check its fresh connections: the shard's :class:`ServerRuns`, which of its servers the
    pool connects to, and the shard's name for the log (passwords masked)."""

    def __init__(self, runs: ServerRuns, server: Hashable, shard: str) -> None:
        self.runs = runs
        self.server = server
        self.shard = shard
        #: Connections this pool connected before: connecting one of them again means it was lost.
        self._connected: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()

    async def connected(self, connection: AbstractConnection, *, was_connected: bool) -> None:
        """``connection`` has just been (re)connected; ``was_connected``: it was open a moment ago (found dead)."""
        if was_connected or connection in self._connected:
            self.runs.connection_failed()
        self._connected.add(connection)
        failures = self.runs.begin(self.server)
        if failures is None:
            return
        try:
            await connection.send_command("INFO", "server", check_health=False)
            reply = await connection.read_response()
        except valkey_errors.ResponseError as error:  # NOPERM, or a server without INFO
            self._off(f"the server refused INFO ({error})")
            return
        except BaseException:
            self.runs.unanswered(self.server)
            await connection.disconnect(nowait=True)  # a reply may still be on its way
            raise
        run_id = run_id_of(reply)
        if run_id is None:
            self._off("INFO server gave no run_id")
            return
        replaced = self.runs.answered(self.server, failures, address_of(connection), run_id)
        if replaced is not None:
            logger.warning(
                "%s: the server restarted (run_id %s, was %s): what it held is gone, the messages queued in it and "
                "the group memberships (a group fills again only as its consumers reconnect and add themselves)",
                self.shard,
                run_id,
                replaced,
            )

    def _off(self, why: str) -> None:
        self.runs.turn_off()
        logger.debug("%s: %s; restarts of its server will not be noticed", self.shard, why)


class CheckedPool(ConnectionPool):
    """A connection pool that hands each fresh connection to its :class:`RunCheck` before anyone uses it."""

    #: Set by the shard that owns the pool; None (a pool made elsewhere) checks nothing.
    run_check: RunCheck | None = None

    def parked_socket_dead(self) -> None:
        """A socket parked between loops (parking.py) was found closed by the server: a restart, perhaps, while no
        loop was running, so the next fresh connection asks again."""
        if self.run_check is not None:
            self.run_check.runs.connection_failed()

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        writer = connection._writer
        await super().ensure_connection(connection)
        check = self.run_check
        if check is not None and connection._writer is not writer:  # a new transport: it connected just now
            await check.connected(connection, was_connected=writer is not None)


def run_id_of(reply: object) -> str | None:
    """The ``run_id`` in an ``INFO server`` reply (bytes or text), or None when it has none."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    if not isinstance(reply, str):
        return None
    for line in reply.splitlines():
        name, _, value = line.partition(":")
        if name == "run_id" and value.strip():
            return value.strip()
    return None


def address_of(connection: AbstractConnection) -> object:
    """Where ``connection`` goes: its unix socket path, or its host and port (a Sentinel's primary once connected)."""
    path = getattr(connection, "path", None)
    if path:
        return path
    return (getattr(connection, "host", None), getattr(connection, "port", None))
