"""Sharded Pub/Sub on a Valkey Cluster: each name is subscribed at the primary that serves its slot.

valkey-py's asyncio cluster client has no Pub/Sub, so on each event loop the layer keeps one subscriber connection
per node that serves subscribed slots (a :class:`NodeSubscriber`: the plain subscriber speaking ``SSUBSCRIBE``),
and a :class:`ClusterSubscriber` that gives each name its *home* from the slot map of
:class:`channels_valkey.sentinel.ClusterShard` and moves names when the cluster changes:

- A slot moved (resharding, a graceful failover): the node that gave it up pushes ``sunsubscribe`` for each name
  of the slot, or refuses a ``SSUBSCRIBE`` with ``MOVED``. The names are placed again from a fresh map; while the
  map still names the node that turned them away, it is read again (every ``TURNED_AWAY_POLL`` seconds at first),
  and after ``TURNED_AWAY_RETRY`` seconds that node is asked again. No connection was lost, so no notice is sent.
- A node's connection is lost: the local channels of its names get the ``on_disconnect`` notice. While it stays
  down, the map is read again every ``STRANDED_POLL`` seconds and names whose slot another primary serves now (the
  replica that took over) move there. Once every name that was down is confirmed again, wherever it lives now, the
  same channels get ``on_reconnect``.
- A node's connection came back: its names are checked against a fresh map, since it may be a replica now (a
  replica accepts ``SSUBSCRIBE`` for its primary's slots, and a subscription there would go unnoticed).

A name leaves its old node before it is subscribed at the new one: Pub/Sub delivers at most once, so a move may
open a gap but never delivers a message twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import ClassVar

from valkey import exceptions as valkey_errors

from channels_valkey.pubsub.replies import Confirmations
from channels_valkey.pubsub.subscriber import Subscriber
from channels_valkey.pubsub.subscriptions import Sink, Subscriptions
from channels_valkey.sentinel import (
    Failure,
    ResiliencePolicy,
    Retries,
    Shard,
    ShardConnection,
    ShardUnavailable,
    cancel_and_wait,
    classify,
    slot_of,
)

logger = logging.getLogger("channels_valkey.pubsub")

#: Seconds between two readings of the slot map while a node holding names is down.
STRANDED_POLL = 0.1
#: First pause, doubled up to STRANDED_POLL, between readings of the map while names are turned away.
TURNED_AWAY_POLL = 0.02
#: Seconds after which a name turned away is subscribed where the map says, even at the same node (a node
#: answers CLUSTERDOWN while a failover is under way, and TRYAGAIN in the middle of a resharding).
TURNED_AWAY_RETRY = 0.5
#: Errors meaning "this node does not serve that slot (now)": the name must find another home.
REDIRECTIONS = (valkey_errors.AskError, valkey_errors.ClusterDownError, valkey_errors.TryAgainError)


class NodeSubscriber(Subscriber):
    """The sharded Pub/Sub connection to one cluster node; what it holds is decided by its ClusterSubscriber."""

    COMMANDS: ClassVar[dict[str, str]] = {"SUBSCRIBE": "SSUBSCRIBE", "UNSUBSCRIBE": "SUNSUBSCRIBE"}
    MESSAGE = "smessage"
    SUBSCRIBED = "ssubscribe"
    UNSUBSCRIBED = "sunsubscribe"

    def __init__(self, index: int, node: Shard, policy: ResiliencePolicy, router: ClusterSubscriber) -> None:
        async def this_node() -> Shard:
            return node

        super().__init__(index, this_node, policy, router)
        self.node = node
        self.router = router

    def describe(self) -> str:
        return self.node.describe()

    def _batches(self, names: list[str]) -> list[list[str]]:
        # A node refuses one command for names of different slots (CROSSSLOT).
        by_slot: dict[int, list[str]] = defaultdict(list)
        for name in names:
            by_slot[slot_of(name)].append(name)
        return list(by_slot.values())

    def _ever_connected(self, shard: Shard) -> bool:
        # A node met for the first time after a failover is worth retrying when the cluster itself answered.
        return self.router.ever_connected or shard.ever_connected

    def _on_subscribed(self, name: str) -> None:
        super()._on_subscribed(name)
        if name in self.confirmed:
            self.router.on_confirmed(self, name)

    def _on_pushed_out(self, name: str) -> None:
        if name in self.wanted:
            self.forget([name])
            self.router.on_turned_away(self, [name])

    def _on_refused(self, names: tuple[str, ...], error: valkey_errors.ResponseError) -> None:
        if isinstance(error, REDIRECTIONS):
            self.forget(names)
            self.router.on_turned_away(self, names)
            return
        super()._on_refused(names, error)
        self.router.on_refused(self, names, error)


class ClusterSubscriber:
    """The subscriptions of one event loop on a Valkey Cluster (shard ``index``), spread over its nodes."""

    def __init__(
        self,
        index: int,
        cluster: Callable[[], Awaitable[ShardConnection]],
        policy: ResiliencePolicy,
        sink: Sink,
    ) -> None:
        self.index = index
        self._cluster = cluster
        self.policy = policy
        self.sink = sink
        #: Names this loop wants subscribed, wherever they live.
        self.wanted: set[str] = set()
        #: Wanted names confirmed by the node they live on.
        self.confirmed: set[str] = set()
        #: True once the cluster answered: from then on failures are retried, not reported as configuration errors.
        self.ever_connected = False
        self._homes: dict[str, NodeSubscriber] = {}
        #: Names without a home: each with the node that turned it away (None: none did) and since when.
        self._homeless: dict[str, tuple[Shard | None, float]] = {}
        self._nodes: dict[Shard, NodeSubscriber] = {}
        #: Nodes that reconnected after an outage, whose names must be checked against a fresh map.
        self._suspects: set[NodeSubscriber] = set()
        #: Names whose connection was lost and which are not confirmed again yet; and every name told so.
        self._down: set[str] = set()
        self._told: set[str] = set()
        self._confirmations = Confirmations()
        self._task: asyncio.Task[None] | None = None
        self._retired_connections = 0

    # What the loop state calls ------------------------------------------------------------------------------

    async def subscribe(self, names: Iterable[str], *, wait: bool) -> None:
        """Want ``names`` subscribed at their nodes; with ``wait``, return once each is confirmed where it lives.

        Raises like :meth:`Subscriber.subscribe`; a name that moves while it is waited for is waited for at its new
        home.
        """
        names = list(names)
        new = [name for name in names if name not in self.wanted]
        for node in {self._homes[name] for name in names if name in self._homes}:
            if not node.listening:  # its listener gave up (the node was unusable): try again
                await node.subscribe((), wait=False)
        if new:
            self.wanted.update(new)
            await self._place(new)
        if self._homeless:
            self._kick()
        if not wait:
            return
        await self._confirmations.wait(
            [name for name in names if name not in self.confirmed],
            self.policy.retry_deadline,
            f"shard {self.index}: the cluster did not confirm SSUBSCRIBE {names[:3]}",
            "made as soon as the cluster answers",
        )

    async def unsubscribe(self, names: Iterable[str]) -> None:
        """Stop wanting ``names``; each node is told at once when connected."""
        leaving: dict[NodeSubscriber, list[str]] = defaultdict(list)
        for name in names:
            if name not in self.wanted:
                continue
            self.wanted.discard(name)
            self.confirmed.discard(name)
            self._homeless.pop(name, None)
            self._down.discard(name)
            self._confirmations.settle(name)
            node = self._homes.pop(name, None)
            if node is not None:
                leaving[node].append(name)
        if not self.wanted:
            # Sets and dicts keep the table of their largest size; after a burst of consumers, give it back.
            self.wanted, self.confirmed, self._homes = set(), set(), {}
        self._check_restored()
        for node, gone in leaving.items():
            await node.unsubscribe(gone)

    @property
    def live(self) -> bool:
        """Whether every wanted name has a home whose connection is up."""
        return not self._homeless and all(node.live for node in self._nodes.values() if node.wanted)

    @property
    def connections_made(self) -> int:
        """How many connections the node subscribers made, retired ones included (tests and monitoring)."""
        return self._retired_connections + sum(node.connections_made for node in self._nodes.values())

    def homes(self) -> dict[str, Shard]:
        """The node each homed name is subscribed at (tests and monitoring)."""
        return {name: node.node for name, node in self._homes.items()}

    async def aclose(self) -> None:
        """Stop the homing task and every node's listener; waiting confirmations get an error."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()
        self._confirmations.settle_all(
            valkey_errors.ConnectionError(f"shard {self.index}: the layer's connections were closed")
        )

    # What the node subscribers report (the Sink of each) ----------------------------------------------------

    def on_message(self, name: str, data: bytes) -> None:
        self.sink.on_message(name, data)

    def on_down(self, source: Subscriptions, names: Collection[str]) -> None:
        lost = set(names)
        self.confirmed.difference_update(lost)
        self._down.update(lost)
        fresh = lost - self._told
        self._told.update(fresh)
        if fresh:
            self.sink.on_down(self, fresh)
        self._kick()

    def on_restored(self, source: Subscriptions, names: Collection[str]) -> None:
        # Each name was reported as confirmed already; the node itself may be a replica now.
        if isinstance(source, NodeSubscriber):
            self._suspects.add(source)
            self._kick()

    def on_failed(self, source: Subscriptions, names: Collection[str], error: BaseException) -> None:
        failed = [name for name in names if name in self.wanted]
        for name in failed:
            self._confirmations.settle(name, error)
        self.sink.on_failed(self, failed, error)

    def on_confirmed(self, node: NodeSubscriber, name: str) -> None:
        """``node`` confirmed ``name``; it counts only where the name lives now."""
        if self._homes.get(name) is not node:
            return
        self.confirmed.add(name)
        self._confirmations.settle(name)
        if self._down:
            self._down.discard(name)
            self._check_restored()

    def on_turned_away(self, node: NodeSubscriber, names: Iterable[str]) -> None:
        """``node`` does not serve the slots of ``names`` (any more): find them another home."""
        now = time.monotonic()
        for name in names:
            if self._homes.get(name) is node:
                del self._homes[name]
            if name in self.wanted:
                self.confirmed.discard(name)
                self._homeless[name] = (node.node, now)
        logger.debug("%s turned away %s; placing them again", node.describe(), list(names)[:3])
        self._kick()

    def on_refused(self, node: NodeSubscriber, names: Iterable[str], error: BaseException) -> None:
        """``node`` refused ``names`` for good (an ACL): they are no longer wanted, their waiters get the error."""
        for name in names:
            if self._homes.get(name) is node:
                del self._homes[name]
            self.wanted.discard(name)
            self.confirmed.discard(name)
            self._down.discard(name)
            self._confirmations.settle(name, error)
        self._check_restored()

    # Homes --------------------------------------------------------------------------------------------------

    async def _place(self, names: list[str]) -> None:
        """Subscribe new names where the current map says; any trouble leaves them to the homing task."""
        try:
            cluster = await self._cluster()
            homes = [(name, await cluster.owner(name)) for name in names]
        except (valkey_errors.ValkeyError, OSError) as error:
            logger.debug("shard %d: cannot place %s yet (%s)", self.index, names[:3], error)
            now = time.monotonic()
            for name in names:
                self._homeless.setdefault(name, (None, now))
            return
        self.ever_connected = True
        await self._move(homes)

    async def _move(self, homes: Iterable[tuple[str, Shard]]) -> None:
        """Make each node the home of its names: they leave their old node first, then are subscribed."""
        arriving: dict[NodeSubscriber, list[str]] = defaultdict(list)
        leaving: dict[NodeSubscriber, list[str]] = defaultdict(list)
        for name, owner in homes:
            if name not in self.wanted:
                continue
            node = self._node(owner)
            self._homeless.pop(name, None)
            old = self._homes.get(name)
            if old is node:
                continue
            if old is not None:
                leaving[old].append(name)
            self._homes[name] = node
            self.confirmed.discard(name)
            arriving[node].append(name)
        for old, names in leaving.items():
            logger.info("%s moves from %s to its slot's primary", names[:3], old.describe())
            await old.unsubscribe(names)
        for node, names in arriving.items():
            # Still living there after the awaits above (an unsubscribe may have come in between).
            await node.subscribe([name for name in names if self._homes.get(name) is node], wait=False)
        if any(not node.live for node in arriving):
            self._kick()  # watch the new homes until their connections are up

    def _node(self, owner: Shard) -> NodeSubscriber:
        found = self._nodes.get(owner)
        if found is None:
            found = self._nodes[owner] = NodeSubscriber(self.index, owner, self.policy, self)
        return found

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._keep_homes(), name=f"channels-valkey pubsub cluster homes shard {self.index}"
            )

    async def _keep_homes(self) -> None:
        """Place homeless names, follow stranded and suspect nodes; ends when every name lives on a live node."""
        # Unbounded, as the node listeners are: the names stay wanted until the cluster answers again.
        retries = Retries(
            self.policy, f"shard {self.index}: reading the slot map", logger=logger, bounded=False
        )
        fruitless = 0
        while True:
            connecting = [node for node in self._nodes.values() if node.listening and not node.live]
            stranded = [node for node in connecting if node.down]
            suspects, self._suspects = self._suspects, set()
            if self._homeless or stranded or suspects:
                try:
                    moved = await self._rehome(stranded, suspects)
                except (valkey_errors.ValkeyError, OSError) as error:
                    self._suspects.update(suspects)
                    if classify(error) is Failure.FATAL or not self.ever_connected:
                        cluster = await self._cluster()
                        self._give_up(ShardUnavailable(cluster.describe(), error))
                        return
                    retries.failed()
                    await retries.wait(error)
                    continue
                retries.succeeded()
                fruitless = 0 if moved else fruitless + 1
            await self._retire_idle()
            if self._homeless:
                await asyncio.sleep(min(TURNED_AWAY_POLL * 2 ** min(fruitless, 8), STRANDED_POLL))
            elif any(node.listening and not node.live for node in self._nodes.values()) or self._suspects:
                await asyncio.sleep(STRANDED_POLL)
            else:
                return

    async def _rehome(self, stranded: list[NodeSubscriber], suspects: set[NodeSubscriber]) -> int:
        """Read the map again and move names to where it says; how many names got a new home."""
        cluster = await self._cluster()
        cluster.suspect_map()
        now = time.monotonic()
        homes: list[tuple[str, Shard]] = []
        for name, (turned_away_by, since) in list(self._homeless.items()):
            owner = await cluster.owner(name)
            if owner is turned_away_by and now - since < TURNED_AWAY_RETRY:
                continue  # this map is older than the node's own word
            homes.append((name, owner))
        for node in [*stranded, *suspects]:
            for name in list(node.wanted):
                owner = await cluster.owner(name)
                if owner is not node.node:
                    homes.append((name, owner))
        self.ever_connected = True
        await self._move(homes)
        return len(homes)

    async def _retire_idle(self) -> None:
        """Close node subscribers that hold no name and cannot connect (a dead node after a failover)."""
        for owner, node in list(self._nodes.items()):
            if not node.wanted and (node.down or not node.listening):
                del self._nodes[owner]
                self._suspects.discard(node)
                self._retired_connections += node.connections_made
                await node.aclose()

    def _give_up(self, error: BaseException) -> None:
        """The cluster cannot be used (credentials, TLS, never reachable): waiters of homeless names get ``error``.

        The names stay wanted; the next subscription tries again.
        """
        logger.error("shard %d: cannot subscribe: %s", self.index, error)
        names = list(self._homeless)
        for name in names:
            self._confirmations.settle(name, error)
        self.sink.on_failed(self, names, error)

    # Notices ------------------------------------------------------------------------------------------------

    def _check_restored(self) -> None:
        if self._told and not self._down:
            told, self._told = self._told, set()
            self.sink.on_restored(self, told)
