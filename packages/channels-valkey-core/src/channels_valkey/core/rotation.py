"""Which shard a normal channel's message goes to: the shards in turn, passing over one that refuses connections.

A normal channel may be queued on any shard, since its receivers read every shard. So when one shard of several is
down, its turn goes to the others: a send tries its shard once, and on a refusal (the command cannot have run)
sends to the next; for a moment after, the sends leave that shard for last, rather than each paying a refused
connection, or a whole connect timeout, before going elsewhere. The moment is the policy's ``backoff_cap``: the
shard is tried again no later than a retry would have tried it, so it takes its turns again soon after it is back.
"""

from __future__ import annotations

import itertools
import time

from channels_valkey.sentinel import Failure, ShardUnavailable, classify


class SendRotation:
    """The order in which a normal channel's send tries the shards; one per layer, shared by its event loops."""

    def __init__(self, pause: float) -> None:
        #: Seconds a shard that refused a send is left for last.
        self.pause = pause
        self._turns = itertools.count()
        #: Shards that refused lately -> the monotonic time until which they come last.
        self._refused: dict[int, float] = {}

    def order(self, size: int) -> list[int]:
        """The ``size`` shards in the order the next send tries them: the next in turn first, then the ones after
        it, the shards that refused lately last (all of them still, in case every shard refused)."""
        first = next(self._turns) % size
        shards = [(first + step) % size for step in range(size)]
        if self._refused:
            now = time.monotonic()
            shards.sort(key=lambda shard: self._refused.get(shard, 0.0) > now)  # stable: turns kept
        return shards

    def next(self, size: int) -> int:
        """The shard of the next send that has no other place to go (``send_many`` puts a channel's messages
        of one call on one shard)."""
        return self.order(size)[0]

    def refused(self, shard: int) -> None:
        """``shard`` refused a send: leave it for last for :attr:`pause` seconds."""
        self._refused[shard] = time.monotonic() + self.pause

    def answered(self, shard: int) -> None:
        """``shard`` took a send: it is up."""
        if self._refused:
            self._refused.pop(shard, None)


def refused_before_running(error: BaseException) -> bool:
    """Whether ``error`` means the shard refused the command before running it (connection refused, no primary,
    ``READONLY``...), so the message can go to another shard without any risk of arriving twice.

    A shard never reached counts too (``ShardUnavailable`` for a refused connection); one that refuses credentials,
    rights or TLS does not: that is a setting to fix, and it is raised.
    """
    cause = error.cause if isinstance(error, ShardUnavailable) else error
    return classify(cause) is Failure.NOT_RUN
