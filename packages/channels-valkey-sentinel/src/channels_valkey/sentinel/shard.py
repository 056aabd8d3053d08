"""One shard's clients on one event loop: the command client, the client for blocking commands, and for a
Sentinel-managed shard the Sentinel connections and the watcher that follows ``+switch-master``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import UnixDomainSocketConnection
from valkey.asyncio.sentinel import Sentinel, SentinelConnectionPool

from channels_valkey.sentinel.blocking import InterruptibleCalls, OnInterrupted
from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.failures import refuses_health_check
from channels_valkey.sentinel.lane import CommandLane
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.specs import HostSpec, SentinelHost, ServerHost
from channels_valkey.sentinel.watcher import SwitchWatcher

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
    ) -> None:
        if not isinstance(spec, ServerHost | SentinelHost):
            raise TypeError(f"shard {index} needs a resolved host, not {spec!r}")
        self.index = index
        self.spec = spec
        self.policy = policy
        self.block_seconds = block_seconds
        #: True once any command on this shard has succeeded: until then failures are configuration errors.
        self.ever_connected = False
        #: The shard's reconnections and failovers, shared with the other loops' shards of the same index.
        self.counts = counts if counts is not None else ShardCounts()
        self._sentinel: Sentinel | None = None
        self._watcher: SwitchWatcher | None = None
        self.client = self._make_client(policy.connection_options())
        self.blocking_client = self._make_client(policy.connection_options(block_seconds=block_seconds))
        self._blocking_calls = InterruptibleCalls(self.blocking_client.connection_pool, self.client)
        #: Pipelined hot commands (see lane.py); its connection comes from the command client's pool.
        self.lane = CommandLane(self.client.connection_pool)
        #: Send one command on the lane (no retries; see ``ConnectionManager.execute_command``). The lane's own
        #: method, not a wrapper: it is the hot path of every send.
        self.execute_command: Callable[..., Awaitable[Any]] = self.lane.execute_command
        if isinstance(spec, SentinelHost):
            self._watcher = SwitchWatcher(spec, policy, self._on_promoting, self._on_switch)
            self._watcher.start()

    def describe(self) -> str:
        return f"shard {self.index} ({self.spec.describe()})"

    def open_connections(self) -> int:
        """Connections of this shard's pools that are open now (any thread may ask: it only reads the pools)."""
        total = 0
        for client in (self.client, self.blocking_client):
            pool = client.connection_pool
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

    def _make_client(self, defaults: dict[str, Any]) -> avalkey.Valkey:
        options = {**defaults, **self.spec.options}
        if isinstance(self.spec, ServerHost):
            if issubclass(options["connection_class"], UnixDomainSocketConnection):
                options.pop("socket_keepalive")  # a TCP option
            return avalkey.Valkey.from_pool(avalkey.ConnectionPool(**options))
        if self._sentinel is None:
            sentinel_options = {
                "socket_connect_timeout": self.policy.connect_timeout,
                "socket_timeout": self.policy.socket_timeout,
                **self.spec.sentinel_options,
            }
            self._sentinel = Sentinel(list(self.spec.sentinels), sentinel_kwargs=sentinel_options)
        client: avalkey.Valkey = self._sentinel.master_for(
            self.spec.service_name, connection_pool_class=FollowingPool, **options
        )
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

    def _pools(self) -> list[FollowingPool]:
        return [
            client.connection_pool
            for client in (self.client, self.blocking_client)
            if isinstance(client.connection_pool, FollowingPool)
        ]

    def stop_health_checks(self, *, quietly: bool = False) -> None:
        """Turn off PING health checks on every connection of this shard (for users whose ACL refuses PING).

        The pools copy ``health_check_interval`` into each connection they make, so the connections they hold
        already are changed too.
        """
        if not quietly:
            logger.warning(
                "%s: the ACL refuses PING; idle connections are no longer health-checked", self.describe()
            )
        for client in (self.client, self.blocking_client):
            pool = client.connection_pool
            pool.connection_kwargs["health_check_interval"] = 0
            held = [*pool._available_connections, *pool._in_use_connections]
            if client.connection is not None:
                held.append(client.connection)
            for connection in held:
                connection.health_check_interval = 0

    async def reset(self) -> None:
        """Drop every connection, in use or idle, so that the next command connects afresh (re-asking Sentinels)."""
        for client in (self.client, self.blocking_client):
            pool = client.connection_pool
            await pool.disconnect(inuse_connections=True)

    async def _on_promoting(self, address: tuple[str, int]) -> None:
        logger.warning(
            "%s: Sentinels are promoting %s:%s; moving connections there", self.describe(), *address
        )
        for pool in self._pools():
            pool.pin(address, self.policy.retry_deadline)
        await self.reset()

    async def _on_switch(self, address: tuple[str, int]) -> None:
        already_there = all(pool.pinned == address for pool in self._pools())
        for pool in self._pools():
            pool.unpin()
        self.counts.switched_to(address)  # counted once per move, however many loops' watchers report it
        if not already_there:
            logger.warning(
                "%s: Sentinels switched the primary to %s:%s; reconnecting", self.describe(), *address
            )
            await self.reset()

    async def aclose(self) -> None:
        """Stop the watcher and close every connection of this shard."""
        if self._watcher is not None:
            await self._watcher.stop()
        await self.lane.aclose()
        await self._blocking_calls.aclose()
        for client in (self.client, self.blocking_client):
            await client.aclose()
        if self._sentinel is not None:
            for sentinel_client in self._sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await sentinel_client.aclose()


class FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that can be pointed at the replica being promoted before the Sentinels announce it.

    The pin expires by itself, so a failover the Sentinels abort cannot leave the pool on a replica for good.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.pinned: tuple[str, int] | None = None
        self._pinned_until = 0.0

    def pin(self, address: tuple[str, int], seconds: float) -> None:
        self.pinned = address
        self._pinned_until = time.monotonic() + seconds

    def unpin(self) -> None:
        self.pinned = None

    async def get_master_address(self) -> tuple[str, int]:
        if self.pinned is not None and time.monotonic() < self._pinned_until:
            self.master_address = self.pinned
            return self.pinned
        self.pinned = None
        address: tuple[str, int] = await super().get_master_address()  # type: ignore[no-untyped-call]
        return address
