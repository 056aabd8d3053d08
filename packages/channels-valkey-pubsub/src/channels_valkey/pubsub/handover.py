"""Publishing through a slot's change of owner on a Valkey Cluster (resharding, failover) without losing messages.

When a slot moves, publishers reach its new owner a moment before the subscribers have followed it there: a
message published in between reaches nobody, and ``SPUBLISH`` says so (0 receivers). After a graceful failover it
is worse: the demoted primary still takes ``SPUBLISH`` (0 receivers, no redirection), so a publisher whose slot map
is old would never learn of the change. So a message that reached nobody makes the publisher check the slot's
owner with a keyed read, which a replica redirects (skipped for a node confirmed in the last ``CONFIRMED_FOR``
seconds, so that publishing to names nobody listens to does not cost a second round trip each time).

If the node it went to is the primary and the slot changed owner within the last ``HANDOVER_GRACE`` seconds, the
message is published again, every ``HANDOVER_RETRY`` seconds, until someone receives it or the grace is over. If
the node turns out to be demoted, the message is not published again: such a node still passes what it takes on to
the new primary's subscribers over the cluster bus (its 0 does not mean nobody gets it), and only the map is
corrected. Only messages that reached nobody at the slot's primary are published again, so nothing is delivered
twice. A name with subscribers in several processes can still miss the processes that had not followed yet when
another one had (the README says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel import ConnectionManager, ShardConnection, ShardUnavailable, slot_of

logger = logging.getLogger("channels_valkey.pubsub")

#: Seconds after a slot changed owner during which a message that reached nobody is published again.
HANDOVER_GRACE = 2.0
#: Seconds between two publications of such a message.
HANDOVER_RETRY = 0.01
#: Seconds a node confirmed as a slot's primary is trusted without asking again. A demoted node still passes what it
#: takes to the new primary over the cluster bus, so trusting it a little long only delays the publisher's switch.
CONFIRMED_FOR = 1.0


class SlotOwners:
    """For one event loop's cluster connections: the node each slot was last published to, and when a slot last
    changed owner. Owners are compared by identity (one object per node and loop)."""

    def __init__(self) -> None:
        self._owners: dict[int, object] = {}
        self._moved_at: dict[int, float] = {}
        self._confirmed_at: dict[object, float] = {}

    def knows(self, slot: int) -> bool:
        return slot in self._owners

    def note(self, slot: int, owner: object) -> float | None:
        """Record that ``slot`` was published to ``owner``; the end of its handover grace, if it is in one."""
        now = time.monotonic()
        previous = self._owners.get(slot)
        self._owners[slot] = owner
        if previous is not None and previous is not owner:
            self._moved_at[slot] = now
        moved_at = self._moved_at.get(slot)
        if moved_at is None:
            return None
        if now - moved_at > HANDOVER_GRACE:
            del self._moved_at[slot]
            return None
        return moved_at + HANDOVER_GRACE

    def confirmed_lately(self, node: object) -> bool:
        """Whether ``node`` was confirmed as a primary within the last ``CONFIRMED_FOR`` seconds."""
        confirmed_at = self._confirmed_at.get(node)
        return confirmed_at is not None and time.monotonic() - confirmed_at < CONFIRMED_FOR

    def confirmed(self, node: object) -> None:
        """A keyed read just found ``node`` serving a slot as its primary."""
        self._confirmed_at[node] = time.monotonic()


class ShardedPublisher:
    """How one layer publishes on a Valkey Cluster: ``SPUBLISH`` to the primary of the name's slot, published again
    while the slot is being handed over (see above).

    Keeps the :class:`SlotOwners` of each event loop's cluster connections, and whether the ACL refuses the keyed
    read that confirms an owner (then owners are not confirmed, and a publisher follows a graceful failover late).
    """

    def __init__(self, connections: ConnectionManager) -> None:
        self._connections = connections
        self._owners: weakref.WeakKeyDictionary[ShardConnection, SlotOwners] = weakref.WeakKeyDictionary()
        self._owner_checks_refused = False
        self._lock = threading.Lock()

    async def publish(self, shard: int, name: str, payload: bytes) -> None:
        """``SPUBLISH`` ``payload`` to ``name`` on the cluster of shard ``shard``; again while its slot is handed
        over and nobody received it."""
        cluster = await self._connections.shard(shard)
        owners = self._owners_seen(cluster)
        slot = slot_of(name)
        if not owners.knows(slot):
            with contextlib.suppress(valkey_errors.ValkeyError, OSError):  # the publish below retries
                owners.note(slot, await cluster.owner(name))
        # Not idempotent: a retried SPUBLISH whose reply was lost would deliver twice; only refused ones retry.
        if await self._connections.execute_command(shard, "SPUBLISH", name, payload, idempotent=False):
            return
        # Nobody received it: nobody listens, or the subscribers have not followed a slot that changed owner yet,
        # or the node is no primary any more (a demoted primary takes SPUBLISH without redirecting it).
        try:
            published_at = await cluster.owner(name)
            if not owners.confirmed_lately(published_at) and await self._confirm_owner(shard, name):
                owners.confirmed(await cluster.owner(name))
            owner = await cluster.owner(name)
        except (valkey_errors.ValkeyError, OSError):
            return
        until = owners.note(slot, owner)
        if owner is not published_at:
            # A demoted primary still hands what it takes to the new primary's subscribers (measured after a
            # graceful failover): its "0 receivers" does not mean nobody gets it, so publishing again could
            # deliver twice. The map is right now; the next messages go to the new primary.
            return
        while until is not None and time.monotonic() < until:
            await asyncio.sleep(HANDOVER_RETRY)
            if await self._connections.execute_command(shard, "SPUBLISH", name, payload, idempotent=False):
                logger.debug("%s reached a receiver after its slot %d changed owner", name, slot)
                return

    async def _confirm_owner(self, shard: int, name: str) -> bool:
        """Bring the slot map up to date for ``name`` with a keyed read, which a node that is no primary redirects;
        False when the ACL refuses it."""
        if self._owner_checks_refused:
            return False
        try:
            await self._connections.execute_command(shard, "EXISTS", name, idempotent=True)
            return True
        except ShardUnavailable as error:
            if not isinstance(error.cause, valkey_errors.NoPermissionError):
                raise
            self._owner_checks_refused = True
            logger.warning(
                "the ACL refuses EXISTS (%s): after a graceful failover, publishers keep sending through the "
                "demoted primary (which passes messages on) until an error makes them read the slot map; allow "
                "EXISTS on the Pub/Sub names to follow at once",
                error.cause,
            )
            return False

    def _owners_seen(self, cluster: ShardConnection) -> SlotOwners:
        found = self._owners.get(cluster)
        if found is None:
            with self._lock:
                found = self._owners.setdefault(cluster, SlotOwners())
        return found
