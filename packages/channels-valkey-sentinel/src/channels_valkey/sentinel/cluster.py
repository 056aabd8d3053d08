"""A Valkey Cluster seen as one shard: each command goes to the primary that owns its key's slot.

The layers address a cluster as shard 0 and keep every key of one script call in one slot (hash tags), so routing
needs nothing but the first key of each command. Each node gets an ordinary :class:`Shard` (a command lane and
cancellable blocking calls), so a cluster keeps the pipelining and the safety of a single server; commands to
different nodes run in parallel because they go out on different connections.

The slot map comes from ``CLUSTER SLOTS`` and is read again, once for all waiting callers, after a redirection
(``MOVED``), a ``CLUSTERDOWN`` or a failed connection: that is how a failover is followed. A command redirected with
``ASK`` (its slot is being migrated and its key already left) is sent to the importing node right after ``ASKING``,
on the same lane with nothing in between. A blocking pop redirected that way polls instead of blocking until the
migration of its slot ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from valkey import exceptions as valkey_errors
from valkey.asyncio.cluster import ClusterParser
from valkey.crc import VALKEY_CLUSTER_HASH_SLOTS, key_slot

from channels_valkey.sentinel.blocking import OnInterrupted
from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.exceptions import CommandNotSent
from channels_valkey.sentinel.failures import Failure, classify
from channels_valkey.sentinel.parking import ConnectionParks
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.shard import Shard
from channels_valkey.sentinel.specs import ClusterHost, ServerHost
from channels_valkey.sentinel.tracking_lane import Doorbell, OnOrphaned

logger = logging.getLogger("channels_valkey.sentinel")

Address = tuple[str, int]
T = TypeVar("T")

#: Position of the first key in the commands that do not have it right after their name.
_FIRST_KEY_AT = {"EVAL": 3, "EVALSHA": 3, "BZMPOP": 3, "ZMPOP": 2}
#: Redirections followed for one command before giving up (a slot moves once per resharding step).
MAX_REDIRECTS = 5
#: Seconds between polls of a blocking pop whose slot is being migrated.
ASK_POLL = 0.05


def first_key(args: Sequence[Any]) -> str | bytes:
    """The key a command is routed by: the first key of a script call or ``BZMPOP``, else its first argument."""
    position = _FIRST_KEY_AT.get(str(args[0]).upper(), 1)
    if len(args) <= position:
        raise TypeError(f"{args[0]} has no key to route it by on a Valkey Cluster: {args!r}")
    key: str | bytes = args[position]
    return key


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key`` (its ``{hash tag}`` if it has one)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def _on_lane(node: Shard, args: Sequence[Any]) -> Awaitable[Any]:
    # Not a coroutine function: the lane's own coroutine is awaited, one frame fewer on the hot path of a send.
    return node.lane.execute_command(*args)


class ClusterShard:
    """The nodes of one Valkey Cluster on one event loop, and the slot map that routes commands to them.

    A :class:`~channels_valkey.sentinel.ShardConnection`: to the layers the whole cluster is one shard.
    """

    def __init__(
        self,
        index: int,
        spec: ClusterHost,
        policy: ResiliencePolicy,
        block_seconds: float,
        *,
        counts: ShardCounts | None = None,
        parks: ConnectionParks | None = None,
    ) -> None:
        self.index = index
        self.spec = spec
        self.policy = policy
        self.block_seconds = block_seconds
        #: True once any command on the cluster has succeeded: until then failures are configuration errors.
        self.ever_connected = False
        #: The cluster's reconnections, failovers and node restarts, shared with the other loops' views of it.
        self.counts = counts if counts is not None else ShardCounts()
        #: Where each node's command connections wait between event loops (see parking.py).
        self._parks = parks
        self._nodes: dict[Address, Shard] = {}
        self._owners: list[Address | None] = [None] * VALKEY_CLUSTER_HASH_SLOTS
        self._primaries: list[Address] = []
        self._stale = True
        self._refresh_lock = asyncio.Lock()
        self._health_checks = True

    def describe(self) -> str:
        return f"shard {self.index} ({self.spec.describe()})"

    def open_connections(self) -> int:
        """Connections open now to every node of the cluster known on this loop."""
        return sum(node.open_connections() for node in list(self._nodes.values()))

    # Nodes and slots --------------------------------------------------------------------------------------------

    def node(self, address: Address) -> Shard:
        """The shard of one node (made on first use); its connections parse cluster redirections as errors."""
        found = self._nodes.get(address)
        if found is None:
            host, port = address
            spec = ServerHost({"parser_class": ClusterParser, **self.spec.node(host, port).options})
            found = self._nodes[address] = Shard(
                self.index,
                spec,
                self.policy,
                self.block_seconds,
                counts=self.counts,
                parks=self._parks,
                park_key=(self.index, address),
            )
            if not self._health_checks:
                found.stop_health_checks(quietly=True)
        return found

    async def primaries(self) -> list[Shard]:
        """One shard per primary that owns slots now."""
        await self._ensure_map()
        return [self.node(address) for address in self._primaries]

    async def owner(self, key: str | bytes) -> Shard:
        """The shard of the primary that owns ``key``'s slot, as far as the slot map knows."""
        await self._ensure_map()
        slot = slot_of(key)
        address = self._owners[slot]
        if address is None:
            self._stale = True
            raise valkey_errors.ClusterDownError(
                f"CLUSTERDOWN no primary owns slot {slot} in {self.describe()}"
            )
        return self.node(address)

    def single_server(self) -> None:
        """None: a cluster's keys live on several primaries (see :meth:`owner` and :meth:`primaries`)."""

    def suspect_map(self) -> None:
        """Read the slot map again before the next command (a node failed or redirected)."""
        self._stale = True

    async def _ensure_map(self) -> None:
        if not self._stale:
            return
        async with self._refresh_lock:
            if self._stale:
                await self._read_map()

    async def _read_map(self) -> None:
        """Ask the known nodes, primaries first, then the startup nodes, until one returns ``CLUSTER SLOTS``.

        When every node failed in a way that will not change by retrying (each presents a certificate that does
        not verify, say), the first such error is raised for the caller to give up on; otherwise the map is worth
        asking for again, and the error says nothing was sent.
        """
        candidates = dict.fromkeys([*self._primaries, *self._nodes, *self.spec.startup_nodes])
        failures: list[str] = []
        fatal: list[BaseException] = []
        for address in candidates:
            try:
                reply = await self.node(address).lane.execute_command("CLUSTER", "SLOTS")
            except (valkey_errors.ValkeyError, OSError) as error:
                if isinstance(error, valkey_errors.AuthenticationError | valkey_errors.NoPermissionError):
                    raise
                failures.append(f"{address[0]}:{address[1]}: {type(error).__name__}: {error}")
                if classify(error) is Failure.FATAL:
                    fatal.append(error)
                continue
            self._install(reply, asked=address)
            return
        if fatal and len(fatal) == len(failures):
            raise fatal[0]
        raise CommandNotSent(f"no node of {self.describe()} told the slot map: {'; '.join(failures)}")

    def _install(self, reply: Any, *, asked: Address) -> None:
        owners: list[Address | None] = [None] * VALKEY_CLUSTER_HASH_SLOTS
        for start, end, primary, *_replicas in reply:
            raw_host, port = primary[0], primary[1]
            host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
            if host in ("", "?"):  # the node does not know its own address: it is the one we asked
                host = asked[0]
            address = (host, int(port))
            owners[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
        moved = self._owners != owners
        self._owners = owners
        self._primaries = list(dict.fromkeys(owner for owner in owners if owner is not None))
        if moved:
            self._wake_readers()
        self._stale = False
        self.counts.primaries_are(self._primaries)

    def _wake_readers(self) -> None:
        """Slots moved: every queue reader waiting on a node pops again, to follow its queue. A node pushes nothing
        for a tracked key that does not exist when its slot leaves."""
        for node in self._nodes.values():
            if "tracking_lane" in node.__dict__:
                node.tracking_lane.ring_all()

    # Commands ---------------------------------------------------------------------------------------------------

    async def execute_command(self, *args: Any) -> Any:
        """Send one command to the primary of its key's slot on that node's lane; the reply is raw."""
        return await self._routed(args, _on_lane, self._asking)

    async def blocking_call(self, args: Sequence[object], on_interrupted: OnInterrupted) -> object:
        """Run a blocking command such as ``BZMPOP`` on the primary of its key (see :meth:`Shard.blocking_call`).

        While the key's slot is migrating and its key has already left, the reply is the nil of a timeout after a
        short wait: the caller asks again and reaches the new owner once the migration of the slot ends.
        """

        async def block(node: Shard, args: Sequence[Any]) -> object:
            return await node.blocking_call(args, on_interrupted)

        return await self._routed(args, block, self._wait_for_migration)

    async def tracked_call(self, args: Sequence[object], bell: Doorbell, on_orphaned: OnOrphaned) -> object:
        """Run a queue reader's pop on the tracking lane of its key's primary (see :meth:`Shard.tracked_call`);
        while the key's slot is migrating, None after a short wait."""

        async def pop(node: Shard, args: Sequence[Any]) -> object:
            return await node.tracked_call(args, bell, on_orphaned)

        return await self._routed(args, pop, self._wait_for_migration)

    async def _routed(
        self,
        args: Sequence[Any],
        send: Callable[[Shard, Sequence[Any]], Awaitable[T]],
        asked: Callable[[Sequence[Any], valkey_errors.AskError], Awaitable[T]],
    ) -> T:
        """``send(node, args)`` on the owner of the command's key, following ``MOVED`` with a fresh slot map; an
        ``ASK`` (the key already left for the node importing its slot) is answered by ``asked``."""
        key = first_key(args)
        for _ in range(MAX_REDIRECTS):
            node = await self.owner(key)
            try:
                return await send(node, args)
            except valkey_errors.MovedError:
                logger.debug("%s: %s on %r moved", self.describe(), args[0], key)
                self.suspect_map()
            except valkey_errors.AskError as redirect:
                return await asked(args, redirect)
            except (
                valkey_errors.ConnectionError,
                valkey_errors.TimeoutError,
                valkey_errors.ClusterDownError,
            ):
                self.suspect_map()
                raise
        raise valkey_errors.ClusterDownError(
            f"CLUSTERDOWN {args[0]} on {key!r} was redirected {MAX_REDIRECTS} times in {self.describe()}"
        )

    async def _asking(self, args: Sequence[Any], redirect: valkey_errors.AskError) -> Any:
        """Send the command to the importing node right after ``ASKING``, on its lane with nothing in between."""
        address = (redirect.host, redirect.port)
        logger.debug("%s: %s on %r asked at %s:%s", self.describe(), args[0], first_key(args), *address)
        return await self.node(address).lane.execute_asking(*args)

    async def _wait_for_migration(self, args: Sequence[Any], redirect: valkey_errors.AskError) -> None:
        """A blocking pop meeting ``ASK`` is not sent on: after a short wait it reports a timeout (None), and the
        caller, asking again, polls until the slot's migration ends and the map names the new owner."""
        logger.debug("%s: %s on %r waits for its slot's migration", self.describe(), args[0], first_key(args))
        await asyncio.sleep(ASK_POLL)

    # Failures and closing ---------------------------------------------------------------------------------------

    def stop_health_checks(self, *, quietly: bool = False) -> None:
        """Turn off PING health checks on every node's connections (an ACL refusing PING)."""
        if self._health_checks and not quietly:
            logger.warning(
                "%s: the ACL refuses PING; idle connections are no longer health-checked", self.describe()
            )
        self._health_checks = False
        for node in self._nodes.values():
            node.stop_health_checks(quietly=True)

    async def reset(self) -> None:
        """A node said it is no primary: read the slot map again before the next command."""
        self.suspect_map()

    async def aclose(self, *, park: bool = False) -> None:
        """Close every node's connections (``park``: the loop is closing, see :meth:`Shard.aclose`)."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose(park=park)
        self._stale = True
