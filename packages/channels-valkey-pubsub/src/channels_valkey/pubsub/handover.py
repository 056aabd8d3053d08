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

import time

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
