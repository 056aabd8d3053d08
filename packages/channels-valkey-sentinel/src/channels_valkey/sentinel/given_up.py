"""Shards given up on: a command spent its whole retry budget on them, so their commands fail at once for a while.

A shard down for longer than a failover the policy rides out would make every command on it spend the budget again:
each would wait for it, and try to connect a few times (on a dead shard a refused connection is about a millisecond
of the event loop here, which the live shards' work waits behind). So once one command has spent the budget, the
shard's commands fail at once with :class:`~channels_valkey.sentinel.CommandNotSent`, without trying, but one every
``backoff_cap`` seconds, which tries once; the first that succeeds (or gets any answer) gives the shard its retries
back.
"""

from __future__ import annotations

import logging
import time

from channels_valkey.sentinel.exceptions import CommandNotSent
from channels_valkey.sentinel.shard_protocol import ShardConnection

logger = logging.getLogger("channels_valkey.sentinel")


class GivenUpShards:
    """The shards (by index: a cluster's nodes share theirs) given up on, and until when each rests."""

    def __init__(self, backoff_cap: float) -> None:
        self._backoff_cap = backoff_cap
        #: Shard index -> the monotonic time until which its commands fail without trying. Empty while no shard is
        #: given up on, which every command checks first (a plain dict: no method call on the usual path).
        self.resting: dict[int, float] = {}

    def refuse_or_try(self, shard: ShardConnection) -> bool:
        """For a command on ``shard``: False when the shard is not given up on (retry as usual); True when this
        command is the one that tries (once), the others resting meanwhile; :class:`CommandNotSent` while it rests."""
        until = self.resting.get(shard.index)
        if until is None:
            return False
        now = time.monotonic()
        if now < until:
            raise CommandNotSent(
                f"{shard.describe()} is down (a command spent the whole retry budget on it); its commands fail at "
                f"once, one trying every {self._backoff_cap:g}s, the next in {until - now:.2f}s"
            )
        self.resting[shard.index] = now + self._backoff_cap
        return True

    def give_up(self, shard: ShardConnection, error: BaseException) -> None:
        """A command spent its whole retry budget on ``shard``."""
        if self.resting.get(shard.index) is None:
            logger.warning(
                "%s: still failing after the retry budget (%s); its commands fail at once, one trying every %gs, "
                "until it answers",
                shard.describe(),
                error,
                self._backoff_cap,
            )
        self.resting[shard.index] = time.monotonic() + self._backoff_cap

    def answered(self, shard: ShardConnection) -> None:
        """``shard`` answered a command: its commands get their retries back."""
        if self.resting.pop(shard.index, None) is not None:
            logger.warning("%s answers again; its commands get their retries again", shard.describe())
