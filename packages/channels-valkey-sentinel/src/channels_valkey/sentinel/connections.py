"""The one object a layer holds to reach Valkey: shards per event loop, commands with retries, closing.

A layer instance is shared by every event loop of a process (``async_to_sync`` makes a new loop per call, in
another thread), and asyncio connections belong to the loop that opened them. So each loop gets its own clients,
created on first use and closed when that loop closes, and no loop ever touches another loop's connections.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeVar

import valkey.asyncio as avalkey

from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.discovery import discover_services
from channels_valkey.sentinel.exceptions import ShardUnavailable
from channels_valkey.sentinel.facts import ShardFacts
from channels_valkey.sentinel.failures import Failure, classify, is_not_primary, refuses_health_check
from channels_valkey.sentinel.follower import PrimaryFollower, PrimaryFollowers
from channels_valkey.sentinel.given_up import GivenUpShards
from channels_valkey.sentinel.loop_shards import LoopShards, make_shards
from channels_valkey.sentinel.loops import close_before_loop
from channels_valkey.sentinel.parking import ConnectionParks
from channels_valkey.sentinel.per_loop import PerLoop
from channels_valkey.sentinel.policy import DEFAULT_POLICY, ResiliencePolicy
from channels_valkey.sentinel.retry import Retries
from channels_valkey.sentinel.ring import ShardRing
from channels_valkey.sentinel.shard import Shard
from channels_valkey.sentinel.shard_protocol import ShardConnection
from channels_valkey.sentinel.specs import HostSpec, SentinelDiscovery, SentinelHost
from channels_valkey.sentinel.watcher import Address

logger = logging.getLogger("channels_valkey.sentinel")

T = TypeVar("T")
Operation = Callable[[avalkey.Valkey], Awaitable[T]]
#: A shard as the layers see it: one server (or Sentinel-managed primary), or a whole Valkey Cluster. The older
#: name of :class:`ShardConnection`, kept for callers that use it.
AnyShard: TypeAlias = ShardConnection


class ConnectionFigures(NamedTuple):
    """One shard's connections now, for ``stats()``."""

    #: Open in some event loop's pools.
    open: int
    #: Sockets of closed loops' connections, waiting for the next loop (parking.py).
    parked: int
    counts: ShardCounts


class _Resolved(NamedTuple):
    """The shards once known: one spec each (Sentinel discovery done), and the ring placing names on them."""

    specs: tuple[HostSpec, ...]
    ring: ShardRing


class ConnectionManager:
    """Clients for every shard, one set per event loop, and the retry policy the layers' commands run under.

    ``hosts`` are decoded host specs (:func:`decode_hosts` of the layer's ``CONFIG["hosts"]``), one per shard.
    ``block_seconds`` is the longest block time the layer passes to blocking commands; their connections read
    that long plus the policy's margin before timing out.
    """

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        policy: ResiliencePolicy = DEFAULT_POLICY,
        *,
        block_seconds: float = 5.0,
    ) -> None:
        if not hosts:
            raise ValueError("ConnectionManager needs at least one host spec (see decode_hosts)")
        self.specs: list[HostSpec] = list(hosts)
        if not isinstance(policy, ResiliencePolicy):
            raise TypeError(f"policy must be a ResiliencePolicy, not {policy!r}")
        self.policy = policy
        self.block_seconds = block_seconds
        self._lock = threading.Lock()
        self._resolved: _Resolved | None = None
        if not any(isinstance(spec, SentinelDiscovery) for spec in self.specs):
            self._settle(self.specs)
        #: Each event loop's shard objects. Every command asks for the running loop's, which the usual case (the
        #: same loop as the command before) finds without the lock.
        self._loops: PerLoop[LoopShards] = PerLoop()
        self._facts: dict[int, ShardFacts] = {}
        self._counts: dict[int, ShardCounts] = {}
        #: Shards on which a command spent its whole retry budget: their commands fail at once for a while.
        self._given_up = GivenUpShards(self.policy.backoff_cap)
        #: Sockets of closed loops' idle connections, for the next loop (see parking.py); closed with the manager.
        self._parks = ConnectionParks()
        weakref.finalize(self, self._parks.close)
        #: One watcher per Sentinel service for every loop of the process (follower.py); stopped with the manager.
        self._followers = PrimaryFollowers()
        weakref.finalize(self, self._followers.stop)

    # Shards ----------------------------------------------------------------------------------------------------

    def ring_now(self) -> ShardRing:
        """The ring placing names on the shards, for callers that cannot wait for a Sentinel discovery.

        Raises RuntimeError while a ``services: []`` entry is not discovered yet (any awaited call does it).
        """
        if self._resolved is None:
            raise RuntimeError(
                "the shards of a 'services: []' Sentinel entry are not known yet: they are asked of the "
                "Sentinels on first use; await ring() (or any command) first"
            )
        return self._resolved.ring

    async def ring(self) -> ShardRing:
        """The ring placing names on the shards, discovering the Sentinels' primaries first if needed."""
        resolved = self._resolved  # known after the first call: every send asks, so no coroutine for it then
        if resolved is None:
            resolved = await self._resolve()
        return resolved.ring

    async def _resolve(self) -> _Resolved:
        """The shards' specs and ring, asking the Sentinels of each ``services: []`` entry the first time only.

        The first discovery fixes the shards for the manager's life, for every loop and every reopening after
        :meth:`close`: a primary the Sentinels start monitoring later is not added, since resizing the ring
        would move names that other processes still place by the old size. Loops discovering at the same time
        keep the first answer.
        """
        if self._resolved is not None:
            return self._resolved
        specs: list[HostSpec] = []
        for spec in self.specs:
            if isinstance(spec, SentinelDiscovery):
                specs.extend(await discover_services(spec))
            else:
                specs.append(spec)
        return self._settle(specs)

    def _settle(self, specs: Sequence[HostSpec]) -> _Resolved:
        with self._lock:
            if self._resolved is None:
                self._resolved = _Resolved(tuple(specs), ShardRing(len(specs)))
            return self._resolved

    def facts(self, index: int) -> ShardFacts:
        """What has been learned about shard ``index`` (refused commands); shared by every event loop."""
        return self._of_shard(self._facts, index, ShardFacts)

    def known_facts(self) -> dict[int, ShardFacts]:
        """The facts learned so far, by shard index (shards nothing was learned about are absent)."""
        with self._lock:
            return dict(self._facts)

    def shard_counts(self, index: int) -> ShardCounts:
        """Reconnections and failovers of shard ``index`` in this process, over every event loop."""
        return self._of_shard(self._counts, index, ShardCounts)

    def follower(self, index: int, spec: SentinelHost) -> PrimaryFollower:
        """The process's follower of the Sentinel service of shard ``index``, shared by every event loop."""

        parks = self._parks  # not the manager: the follower's thread must not keep it alive

        def forget_others(address: Address) -> None:
            # Sockets parked for another address of this shard reach a former primary (see Shard._make_client).
            parks.close_where(lambda key: _parked_at(key, (index,)) not in (None, address))

        return self._followers.get(index, spec, self.policy, self.shard_counts(index), forget_others)

    def _of_shard(self, kept: dict[int, T], index: int, make: Callable[[], T]) -> T:
        """``kept[index]``, made on first use; read without the lock, which only its making takes."""
        found = kept.get(index)
        if found is None:
            with self._lock:
                found = kept.setdefault(index, make())
        return found

    def connection_figures(self) -> dict[int, ConnectionFigures]:
        """Per shard index: the connections open to it now (every event loop's), those parked between loops, and its
        counts.

        Safe to call from any thread (a metrics reader's): it only reads how many connections each pool holds.
        """
        with self._lock:
            states = list(self._loops.values())
            indexes = set(self._counts) | set(range(len(self._resolved.specs) if self._resolved else 0))
        open_now = dict.fromkeys(indexes, 0)
        for state in states:
            for shard in state.shards or []:
                open_now[shard.index] = open_now.get(shard.index, 0) + shard.open_connections()
        parked = self._parks.parked_by_shard()
        return {
            index: ConnectionFigures(count, parked.get(index, 0), self.shard_counts(index))
            for index, count in open_now.items()
        }

    async def shards(self) -> list[AnyShard]:
        """This event loop's shards, connecting lazily (and discovering Sentinel services on first use)."""
        return await self._loop_shards().get()

    async def shard_count(self) -> int:
        return len(await self.shards())

    async def shard(self, index: int) -> AnyShard:
        state = self._loop_shards()
        shards = state.shards  # built already but on a loop's first commands
        if shards is None:
            shards = await state.get()
        if not 0 <= index < len(shards):
            raise IndexError(f"shard index {index} out of range: there are {len(shards)} shards")
        return shards[index]

    async def client(self, index: int = 0, *, blocking: bool = False) -> avalkey.Valkey:
        """The client of shard ``index`` on this loop (``blocking=True``: the one for blocking commands).

        Commands sent on it directly get no retries; use :meth:`execute` for those.
        """
        shard = await self._server_shard(index, "client")
        return shard.blocking_client if blocking else shard.client

    async def primaries(self, index: int) -> list[Shard]:
        """The primaries behind shard ``index``: the shard itself, or every primary of a cluster."""
        return await (await self.shard(index)).primaries()

    async def _server_shard(self, index: int, method: str) -> Shard:
        shard = await self.shard(index)
        server = shard.single_server()
        if server is None:
            raise TypeError(
                f"{method}() needs one server, and {shard.describe()} is a Valkey Cluster: send keyed commands "
                "with execute_command() (routed by key) or reach each primary through primaries()"
            )
        return server

    # Commands --------------------------------------------------------------------------------------------------

    async def execute(
        self,
        index: int,
        operation: Operation[T],
        *,
        idempotent: bool,
        blocking: bool = False,
    ) -> T:
        """Run ``operation(client)`` on shard ``index``, retrying under the policy when the connection fails.

        A command refused before it ran (connection refused, ``READONLY``, ``LOADING``, no primary known yet) is
        always retried; one whose reply was lost only when ``idempotent`` is true, since it may have run. A shard
        that has never answered, bad credentials and TLS failures raise :class:`ShardUnavailable` at once.
        """
        shard = await self._server_shard(index, "execute")
        return await self._with_retries(
            shard,
            lambda: operation(shard.blocking_client if blocking else shard.client),
            idempotent=idempotent,
        )

    async def execute_command(self, index: int, *args: Any, idempotent: bool, retry: bool = True) -> Any:
        """Send one command on shard ``index``'s pipelined lane, with :meth:`execute`'s retries.

        The lane (:class:`channels_valkey.sentinel.lane.CommandLane`) shares one connection between concurrent
        callers, so this is the cheap way to send short commands; the reply is raw (no valkey-py callbacks).
        On a cluster the command goes to the primary of its (first) key's slot.

        ``retry=False``: one attempt, whose failure is raised as it is (still ``ShardUnavailable`` for a shard that
        cannot be used), for a caller with somewhere else to go: the core layer sends a normal channel's message to
        the next shard rather than wait for one that refuses connections.
        """
        shards = self._loop_shards().shards  # built: the usual case, which needs no coroutine for the lookup
        if shards is not None and 0 <= index < len(shards):
            shard = shards[index]
        else:
            shard = await self.shard(index)
        if shard.ever_connected and not self._given_up.resting:
            # The usual case, without _with_retries' frame: a success has nothing to record.
            try:
                return await shard.execute_command(*args)
            except Exception as error:
                first_failure = error
        else:
            first_failure = None
        return await self._with_retries(
            shard,
            lambda: shard.execute_command(*args),
            idempotent=idempotent,
            retry=retry,
            first_failure=first_failure,
        )

    async def execute_on(self, shard: Shard, operation: Operation[T], *, idempotent: bool) -> T:
        """Run ``operation(client)`` on one server shard got from :meth:`primaries`, with :meth:`execute`'s
        retries."""
        return await self._with_retries(shard, lambda: operation(shard.client), idempotent=idempotent)

    async def _with_retries(
        self,
        shard: AnyShard,
        attempt_once: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        retry: bool = True,
        first_failure: Exception | None = None,
    ) -> T:
        """Run ``attempt_once`` until it succeeds or the policy gives up; ``first_failure``: the error of an
        attempt the caller made already."""
        retries: Retries | None = None  # made at the first failure: most commands never need it
        if self._given_up.resting and self._given_up.refuse_or_try(shard):
            retry = False
        while True:
            try:
                if first_failure is not None:
                    failed, first_failure = first_failure, None
                    raise failed
                result = await attempt_once()
            except Exception as error:
                if refuses_health_check(error):
                    shard.stop_health_checks()
                    continue  # the PING came before the command: nothing ran
                failure = classify(error)
                if failure is None:
                    # An error reply (NOSCRIPT, WRONGTYPE...): the shard answered. Given up on, it is back (the
                    # caller's next command, EVAL after NOSCRIPT, must not find it resting).
                    if self._given_up.resting:
                        self._given_up.answered(shard)
                    raise
                if is_not_primary(error):
                    await shard.reset()
                if failure is Failure.FATAL or not shard.ever_connected:
                    raise ShardUnavailable(shard.describe(), error) from error
                again = retry and (
                    failure is Failure.NOT_RUN or (failure is Failure.MAYBE_RUN and idempotent)
                )
                if retries is None:
                    retries = Retries(
                        self.policy,
                        shard.describe(),
                        logger=logger,
                        on_retry=self.shard_counts(shard.index).reconnected,
                    )
                if not again:
                    raise
                if not retries.failed():
                    self._given_up.give_up(shard, error)
                    raise
                await retries.wait(error)
            else:
                shard.ever_connected = True
                if self._given_up.resting:
                    self._given_up.answered(shard)
                return result

    # Closing ---------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close this event loop's connections, and the sockets parked by closed loops; the manager stays usable
        and reconnects on the next command. The last loop to close also stops the Sentinel followers' thread."""
        await self._close_loop(park=False)
        self._parks.close()
        with self._lock:
            loops_left = len(self._loops)
        if not loops_left:
            await asyncio.to_thread(self._followers.stop)

    def parked_connections(self) -> int:
        """Sockets of closed event loops' connections waiting for the next loop now (see parking.py)."""
        return self._parks.parked()

    async def _close_loop(self, *, park: bool) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.pop(loop)
        if state is not None:
            await state.aclose(park=park)

    async def _loop_closing(self) -> None:
        """The loop closes (its close hook): its idle connections' sockets are parked for the next loop."""
        await self._close_loop(park=True)

    async def _make_shards(self) -> list[AnyShard]:
        """The running loop's shard objects (see loop_shards.py), after a Sentinel discovery if one is due."""
        specs = (await self._resolve()).specs
        return make_shards(
            specs,
            self.policy,
            self.block_seconds,
            parks=self._parks,
            counts=self.shard_counts,
            follower=self.follower,
        )

    def _loop_shards(self) -> LoopShards:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None:
            return state
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                state = self._loops.put(loop, LoopShards(self._make_shards))
                close_before_loop(loop, self, ConnectionManager._loop_closing)
        return state


def _parked_at(key: object, park_key: tuple[int]) -> Address | None:
    """The primary's address in a park key of a Sentinel shard with ``park_key`` (``((park_key, address), kind)``),
    or None for any other key."""
    if isinstance(key, tuple) and key and isinstance(key[0], tuple) and len(key[0]) == 2:
        shard_key, address = key[0]
        if shard_key == park_key and isinstance(address, tuple):
            return address
    return None
