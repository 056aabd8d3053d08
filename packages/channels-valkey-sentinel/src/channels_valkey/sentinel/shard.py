"""One shard's clients on one event loop: the command client and the client for blocking commands; a
Sentinel-managed shard's find the primary through the process's follower of that service (follower.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from valkey.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from channels_valkey.sentinel.blocking import InterruptibleCalls, OnInterrupted
from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.failures import refuses_health_check
from channels_valkey.sentinel.follower import PrimaryFollower
from channels_valkey.sentinel.lane import CommandLane
from channels_valkey.sentinel.parking import (
    ConnectionPark,
    ConnectionParks,
    ParkingPool,
    connect_from_park,
    park_idle_connections,
)
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.restarts import CheckedPool, RunCheck
from channels_valkey.sentinel.specs import HostSpec, SentinelHost, ServerHost
from channels_valkey.sentinel.tracking_lane import Doorbell, OnOrphaned, TrackingLane
from channels_valkey.sentinel.watcher import Address

logger = logging.getLogger("channels_valkey.sentinel")


class Shard:
    """The clients of one server shard, bound to the event loop that created them and closed with it.

    A :class:`~channels_valkey.sentinel.ShardConnection`; a cluster's nodes are shards of this kind too.
    """

    def __init__(
        self,
        index: int,
        spec: HostSpec,
        policy: ResiliencePolicy,
        block_seconds: float,
        *,
        counts: ShardCounts | None = None,
        parks: ConnectionParks | None = None,
        park_key: Hashable = None,
        follower: PrimaryFollower | None = None,
    ) -> None:
        if not isinstance(spec, ServerHost | SentinelHost):
            raise TypeError(f"shard {index} needs a resolved host, not {spec!r}")
        if isinstance(spec, SentinelHost) and follower is None:
            raise TypeError(f"shard {index} ({spec.describe()}) needs the PrimaryFollower of its service")
        self.index = index
        self.spec = spec
        self.policy = policy
        self.block_seconds = block_seconds
        #: True once any command on this shard has succeeded: until then failures are configuration errors.
        self.ever_connected = False
        #: The shard's reconnections, failovers and restarts, shared with the other loops' shards of the same index.
        self.counts = counts if counts is not None else ShardCounts()
        self._sentinel: Sentinel | None = None
        self._follower = follower
        #: Where the sockets of this server's connections wait between event loops (not for TLS, see parking.py),
        #: under ``park_key`` (and for a Sentinel shard the primary's address) and the kind of connection.
        self._parks = parks
        self._park_key = park_key
        self._health_checks = True
        #: Resets asked for by the follower, running on this loop.
        self._moving: set[asyncio.Task[None]] = set()
        self._command_pool: ConnectionPool
        if isinstance(spec, ServerHost):
            # The lane needs only the pool; the client around it is made when someone asks (see ``client``).
            self._command_pool = self._server_pool(policy.connection_options(), "commands")
        else:
            self.client = self._make_client(policy.connection_options(), "commands")
            self._command_pool = self.client.connection_pool
        #: Pipelined hot commands (see lane.py); its connection comes from the command client's pool.
        self.lane = CommandLane(self._command_pool, on_lost=self.counts.runs.connection_failed)
        #: Send one command on the lane (no retries; see ``ConnectionManager.execute_command``). The lane's own
        #: method, not a wrapper: it is the hot path of every send.
        self.execute_command: Callable[..., Awaitable[Any]] = self.lane.execute_command
        if follower is not None:
            follower.follow(self)

    def describe(self) -> str:
        return f"shard {self.index} ({self.spec.describe()})"

    @functools.cached_property
    def client(self) -> avalkey.Valkey:
        """The valkey-py client on the command connections' pool (the lane's), made on first use: most loops
        only ever send on the lane."""
        return avalkey.Valkey.from_pool(self._command_pool)

    @functools.cached_property
    def blocking_client(self) -> avalkey.Valkey:
        """The client for blocking commands (longer read timeout), made on first use: a loop that only sends
        (each ``async_to_sync`` call of a view) never needs it."""
        client = self._make_client(
            self.policy.connection_options(block_seconds=self.block_seconds), "blocking"
        )
        if not self._health_checks:
            _stop_health_checks(client.connection_pool)
        return client

    @functools.cached_property
    def _blocking_calls(self) -> InterruptibleCalls:
        return InterruptibleCalls(self.blocking_client.connection_pool, self.client)

    @functools.cached_property
    def tracking_lane(self) -> TrackingLane:
        """The lane of the queue readers' pops, on a RESP3 connection that tracks the queues they read (see
        tracking_lane.py), made on first use."""
        # The lane switches the connection to RESP3 itself (``HELLO 3`` with the tracking, one round trip): the
        # pool connects and authenticates it as it does the command lane's.
        pool = self._make_client(self.policy.connection_options(), "tracking").connection_pool
        # Its readers wait on it as a subscriber waits on its Pub/Sub connection: losing it counts as a reconnection.
        return TrackingLane(pool, on_lost=self.counts.reconnected)

    async def tracked_call(self, args: Sequence[object], bell: Doorbell, on_orphaned: OnOrphaned) -> object:
        key = str(args[3])
        lane = self.tracking_lane
        lane.watch(key, bell)
        try:
            return await lane.execute_keeping(on_orphaned, *args)
        except BaseException:
            lane.unwatch(key, bell)
            raise

    def _pools(self) -> list[ConnectionPool]:
        """The connection pools made so far: the command pool, and the blocking and tracking ones once used."""
        made: list[ConnectionPool] = [self._command_pool]
        if "blocking_client" in self.__dict__:
            made.append(self.blocking_client.connection_pool)
        if "tracking_lane" in self.__dict__:
            made.append(self.tracking_lane._pool)
        return made

    def open_connections(self) -> int:
        """Connections of this shard's pools that are open now (any thread may ask: it only reads the pools)."""
        total = 0
        for pool in self._pools():
            held = list(pool._available_connections) + list(pool._in_use_connections)
            total += sum(1 for connection in held if connection.is_connected)
        return total

    # What a cluster shard answers with its nodes: here, this one server (see ShardConnection).

    async def primaries(self) -> list[Shard]:
        return [self]

    async def owner(self, key: str | bytes) -> Shard:
        return self

    def single_server(self) -> Shard:
        return self

    def suspect_map(self) -> None:
        """No slot map to read again: the Sentinel watcher, if any, follows the primary."""

    def _server_pool(self, defaults: dict[str, Any], kind: str) -> CheckedPool:
        """A pool of ``kind`` connections to this plain server, parking their sockets between loops where the shard
        has parks and the connections are not TLS."""
        options = {**defaults, **self.spec.options}
        connection_class = options["connection_class"]
        if issubclass(connection_class, UnixDomainSocketConnection):
            options.pop("socket_keepalive")  # a TCP option
        pool: CheckedPool
        if self._parks is not None and not issubclass(connection_class, SSLConnection):
            pool = ParkingPool(park=self._parks.park((self._park_key, kind)), **options)
        else:
            pool = CheckedPool(**options)
        return self._checked(pool)

    def _checked(self, pool: CheckedPool) -> CheckedPool:
        """``pool``, its fresh connections checked for a restarted server (restarts.py)."""
        pool.run_check = RunCheck(self.counts.runs, self._park_key, self.describe())
        return pool

    def _make_client(self, defaults: dict[str, Any], kind: str) -> avalkey.Valkey:
        if isinstance(self.spec, ServerHost):
            return avalkey.Valkey.from_pool(self._server_pool(defaults, kind))
        if self._follower is None:
            raise TypeError(f"{self.describe()} has no PrimaryFollower")
        if self._sentinel is None:
            sentinel_options = {
                "socket_connect_timeout": self.policy.connect_timeout,
                "socket_timeout": self.policy.socket_timeout,
                **self.spec.sentinel_options,
            }
            self._sentinel = Sentinel(list(self.spec.sentinels), sentinel_kwargs=sentinel_options)
        options = {**defaults, **self.spec.options}
        parks, park_key = self._parks, self._park_key
        park_of: Callable[[Address], ConnectionPark] | None = None
        if (
            parks is not None
            and not options.get("ssl")
            and not issubclass(options.get("connection_class", Connection), SSLConnection)
        ):

            def park_of(address: Address) -> ConnectionPark:
                return parks.park(((park_key, address), kind))

        client: avalkey.Valkey = self._sentinel.master_for(
            self.spec.service_name,
            connection_pool_class=FollowingPool,
            follower=self._follower,
            park_of=park_of,
            **options,
        )
        if isinstance(client.connection_pool, CheckedPool):
            self._checked(client.connection_pool)
        return client

    async def blocking_call(self, args: Sequence[object], on_interrupted: OnInterrupted) -> object:
        """Run the blocking command ``args`` (``BZPOPMIN key 5``...) on a connection of its own, safe to cancel.

        A cancelled caller loses nothing: the command is unblocked and its reply, if any, goes to
        ``on_interrupted`` (see :mod:`channels_valkey.sentinel.blocking`). No retries here: the caller decides,
        since a lost reply may have popped data.
        """
        try:
            return await self._blocking_calls.call(args, on_interrupted)
        except valkey_errors.NoPermissionError as error:
            if not refuses_health_check(error):
                raise
            self.stop_health_checks()  # the PING came before the command: nothing ran
            return await self._blocking_calls.call(args, on_interrupted)

    def stop_health_checks(self, *, quietly: bool = False) -> None:
        """Turn off PING health checks on every connection of this shard (for users whose ACL refuses PING).

        The pools copy ``health_check_interval`` into each connection they make, so the connections they hold
        already are changed too.
        """
        if not quietly:
            logger.warning(
                "%s: the ACL refuses PING; idle connections are no longer health-checked", self.describe()
            )
        self._health_checks = False
        for pool in self._pools():
            _stop_health_checks(pool)

    async def reset(self) -> None:
        """Drop every connection, in use or idle, so that the next command connects afresh (re-asking Sentinels)."""
        for pool in self._pools():
            await pool.disconnect(inuse_connections=True)

    def primary_moving(self) -> None:
        """The follower's word that the primary is moving (called on this shard's loop): every connection is
        dropped, and the next command connects where the follower now points."""
        task = asyncio.get_running_loop().create_task(self.reset())
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def aclose(self, *, park: bool = False) -> None:
        """Stop the watcher and close every connection of this shard.

        ``park``: the loop is closing; the idle command connections' sockets go to the park for the next loop
        instead (plain servers only, see parking.py).
        """
        if self._follower is not None:
            self._follower.unfollow(self)
        for task in list(self._moving):
            task.cancel()
        await self.lane.aclose(keep_connection=park)
        if "_blocking_calls" in self.__dict__:
            await self._blocking_calls.aclose(keep_connections=park)
        if "tracking_lane" in self.__dict__:
            await self.tracking_lane.aclose(keep_connection=park)
        if park:
            for pool in self._pools():
                if isinstance(pool, ParkingPool | FollowingPool):
                    await pool.park_idle()
        for pool in self._pools():
            await pool.disconnect()
        if self._sentinel is not None:
            for sentinel_client in self._sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await sentinel_client.aclose()


class FollowingConnection(SentinelManagedConnection):
    """valkey-py's connection to a Sentinel service's primary, whose ``repr`` survives its pool.

    The connection holds its pool by a weak proxy. When a layer is dropped without ``close_pools()``, the garbage
    collector may free the pool before an open connection of it, whose ``__del__`` then warns of an unclosed
    connection with its ``repr``: valkey-py's raised ``ReferenceError`` there, which turned the warning into an
    "exception ignored" that test runners format in whichever thread collected it (and Python 3.11's traceback
    formatting is not safe in two threads at once).
    """

    def __repr__(self) -> str:
        try:
            return str(super().__repr__())  # type: ignore[no-untyped-call]
        except ReferenceError:
            return f"<{type(self).__module__}.{type(self).__name__}(host={self.host},port={self.port})>"


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    """:class:`FollowingConnection` over TLS."""


class FollowingPool(SentinelConnectionPool, CheckedPool):
    """A Sentinel pool that connects where the process's follower of the service points (follower.py), asking the
    Sentinels only while the follower cannot say; with ``park_of``, its sockets wait between loops in the park of
    the primary they reach (parking.py)."""

    def __init__(
        self,
        service_name: str,
        sentinel_manager: Sentinel,
        *,
        follower: PrimaryFollower,
        park_of: Callable[[Address], ConnectionPark] | None = None,
        **kwargs: Any,
    ) -> None:
        if "connection_class" not in kwargs:
            tls = kwargs.pop("ssl", False)
            kwargs["connection_class"] = FollowingSSLConnection if tls else FollowingConnection
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.follower = follower
        self._park_of = park_of

    async def get_master_address(self) -> Address:
        address = self.follower.address()
        if address is None:
            asked: Address = await super().get_master_address()  # type: ignore[no-untyped-call]
            return asked
        if self.master_address != address:
            self.master_address = address
            await self.disconnect(inuse_connections=False)  # idle connections reconnect where it points now
        return address

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        park_of = self._park_of
        address = self.follower.address() if park_of is not None else None
        # The pool's connections are SentinelManagedConnections, which have an address to set.
        if (
            park_of is not None
            and address is not None
            and isinstance(connection, Connection)
            and await connect_from_park(connection, park_of(address), on_dead=self.parked_socket_dead)
        ):
            connection.host, connection.port = address
            self.master_address = address
            return
        await super().ensure_connection(connection)

    async def park_idle(self) -> int:
        """Move the sockets of idle connections to the primary's park (the loop closes), if the follower still
        names that primary; returns how many."""
        park_of = self._park_of
        if park_of is None:
            return 0

        def park_for(connection: AbstractConnection) -> ConnectionPark | None:
            if not isinstance(connection, Connection):
                return None
            address = (connection.host, connection.port)
            return park_of(address) if self.follower.is_current(address) else None

        return await park_idle_connections(self, park_for)


def _stop_health_checks(pool: ConnectionPool) -> None:
    """No PING health checks on ``pool``'s connections, those it holds and those it makes from now on."""
    pool.connection_kwargs["health_check_interval"] = 0
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        connection.health_check_interval = 0
