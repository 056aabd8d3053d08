"""Popping a queue with a receipt: what a pop took can be read back after its reply was lost.

A queue reader pops with :data:`POP`, a script that moves what it pops from the queue into the reader's receipt, a
sorted set of its own next to the queue (``{queue}$receipt:{16 hex}``, expiring after the layer's ``expiry``, by
when anything in it would be dropped as expired anyway). The rules that make a cut connection lose nothing and
deliver nothing twice:

- A pop whose reply was read clears the receipt at the next pop (the reply was seen: the receipt has done its job).
- After a pop whose reply may be lost (any error), the next pop does not clear the receipt: it returns what the
  receipt holds, then what it pops (adding that to the receipt too). The reader drops from the returned receipt the
  members of the last reply it did read (that pop's receipt, kept because the failing pop never ran) and delivers
  the rest. This repeats until a reply is read.
- Giving popped messages back to the queue (a receive went away) strikes them from the receipt in the same script
  (:data:`REQUEUE`) and from the reader's memory of the last reply, so a message popped again is never mistaken for
  one already seen.
- A failover can leave on the new primary an older receipt than the reader's last (replication is asynchronous):
  the receipt's entries are also dropped when the reader delivered them lately (:data:`RECENT_SECONDS`, at most
  :data:`RECENT_MEMBERS` members).
- A reader that stops with a receipt still holding the last reply clears it a moment later (:data:`ACK_DELAY`,
  unless it pops again first) or when its loop closes; one whose last reply was lost reads the receipt back and
  returns it to the queue.

The script ends by reading the queue, so the reader's connection tracks the key and is told of the next message
(tracking_lane.py); senders stay 0.3's ``ZADD``. Its reply says how many entries are left: after a pop that left
none, the reader's next pop first waits to be told, instead of popping to find the queue empty. Where the ACL
refuses the script, ``CLIENT TRACKING`` or ``HELLO``, readers use ``BZMPOP`` as before (the shard's facts say so),
which loses a pop's messages when its reply is cut.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.queue_commands import Entry, OnPopped
from channels_valkey.sentinel.scripts import Script, refuses_evalsha
from channels_valkey.sentinel.tracking_lane import Doorbell

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionManager
    from channels_valkey.sentinel.shard_protocol import ShardConnection

#: Most seconds a reader waits on an empty queue of a Valkey Cluster before popping again (see pop_with_receipt).
CLUSTER_RECHECK = 1.0
#: How long, and for how many members, a reader remembers what it delivered, to drop a stale receipt's copies.
RECENT_SECONDS = 10.0
RECENT_MEMBERS = 4096
#: Seconds a stopped reader waits before clearing its receipt itself: a receive that comes meanwhile (the next
#: message of a sequential consumer) pops, which clears it at no cost.
ACK_DELAY = 0.05

POP = Script(
    """
local held = {}
if ARGV[3] == '1' then
  held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
else
  redis.call('DEL', KEYS[2])
end
local popped = {}
local count = tonumber(ARGV[1])
if count > 0 then
  popped = redis.call('ZRANGE', KEYS[1], 0, count - 1, 'WITHSCORES')
end
if #popped > 0 then
  local pairs = {}
  for i = 1, #popped, 2 do
    pairs[#pairs + 1] = popped[i + 1]
    pairs[#pairs + 1] = popped[i]
  end
  redis.call('ZADD', KEYS[2], unpack(pairs))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #popped / 2 - 1)
end
local left = redis.call('ZCARD', KEYS[1])
local reply = {#held / 2, left}
for i = 1, #held do reply[#reply + 1] = held[i] end
for i = 1, #popped do reply[#reply + 1] = popped[i] end
return reply
"""
)
"""KEYS: the queue, the receipt. ARGV: how many to pop, the receipt's time to live in ms, ``1`` to return what the
receipt holds (the last reply may be lost) rather than clear it. Reply: the number of entries from the receipt, the
number left in the queue, then members and scores, the receipt's first.

The popped entries are written to the receipt before they leave the queue: a script that fails half-way keeps what
it did before the failure, and a cluster refuses a write to a key of a slot being migrated away (the receipt, new
on this node) in the middle of the script. The queue is read last, so that the calling connection tracks it."""

REQUEUE = Script(
    """
local members = {}
for i = 2, #ARGV, 2 do members[#members + 1] = ARGV[i] end
redis.call('ZREM', KEYS[2], unpack(members))
redis.call('ZADD', KEYS[1], unpack(ARGV))
return #members
"""
)
"""KEYS: the queue, the receipt. ARGV: score, member, ... Strikes the entries from the receipt and puts them back
at the head of the queue (their original scores). In that order: if the second write fails half-way (see
:data:`POP`), the reader still holds them and puts them back again later, and no copy is left behind anywhere."""


class Receipt:
    """One queue reader's receipt: its key on the server and what the reader knows of it."""

    __slots__ = ("drained", "key", "name", "outstanding", "recent", "seen", "uncertain")

    def __init__(self, key: str) -> None:
        #: The queue.
        self.key = key
        #: The receipt's key, next to the queue's (the same hash tag on a cluster).
        self.name = f"{key}$receipt:{os.urandom(8).hex()}"
        #: Members of the last reply read: what the receipt holds if the next pop did not run.
        self.seen: set[bytes] = set()
        #: A pop's reply may be lost: the next pop returns the receipt instead of clearing it.
        self.uncertain = False
        #: The receipt holds the last reply's entries, not yet cleared.
        self.outstanding = False
        #: The last pop left the queue empty (and read it last, so its connection is told of the next change).
        self.drained = False
        #: The hashes of the members of the replies read in the last RECENT_SECONDS -> when (monotonic), oldest
        #: first. Hashes, not members: the members are whole messages, which this must not keep alive. Only a
        #: receipt read back is checked against them, so a 64-bit collision would have to fall on one of those.
        self.recent: dict[int, float] = {}

    def pop_args(self, count: int, ttl_ms: int, *, sha: bool = True) -> tuple[object, ...]:
        flag = "1" if self.uncertain else "0"
        script = ("EVALSHA", POP.sha) if sha else ("EVAL", POP.source)
        return (*script, 2, self.key, self.name, count, ttl_ms, flag)

    def read(self, reply: object) -> list[Entry]:
        """The entries of ``reply`` the reader has not seen yet, oldest first (the receipt's come first)."""
        if reply is None:  # a cluster slot migrating: nothing ran
            return []
        if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], int):
            raise valkey_errors.DataError(f"unexpected reply {reply!r} to the receipt pop")
        held = reply[0]
        flat = reply[2:]
        entries = [(bytes(member), float(score)) for member, score in zip(flat[::2], flat[1::2], strict=True)]
        recent = self.recent
        now = time.monotonic()
        if entries:
            self._forget_older(now)
        fresh = entries
        if held:
            fresh = [
                entry
                for entry in entries[:held]
                if entry[0] not in self.seen and hash(entry[0]) not in recent
            ] + entries[held:]
        self.seen = {member for member, _ in entries}
        if entries:
            for member in self.seen:
                digest = hash(member)
                recent.pop(digest, None)
                recent[digest] = now
            while len(recent) > RECENT_MEMBERS:
                del recent[next(iter(recent))]
        self.uncertain = False
        self.outstanding = bool(entries)
        self.drained = reply[1] == 0
        return fresh

    def lost(self) -> None:
        """A pop's reply did not come: what it popped (if it ran) is in the receipt."""
        self.uncertain = True
        self.drained = False

    def returned(self, entries: Sequence[Entry]) -> None:
        """``entries`` went back to the queue and out of the receipt."""
        self.drained = False
        for member, _ in entries:
            self.seen.discard(member)
            self.recent.pop(hash(member), None)

    def _forget_older(self, now: float) -> None:
        oldest_kept = now - RECENT_SECONDS
        recent = self.recent
        while recent and next(iter(recent.values())) < oldest_kept:
            del recent[next(iter(recent))]


async def pop_with_receipt(
    connections: ConnectionManager,
    shard: int,
    receipt: Receipt,
    bell: Doorbell,
    count: int,
    timeout: float,
    ttl_ms: int,
    on_interrupted: OnPopped,
) -> list[Entry]:
    """Up to ``count`` entries of the receipt's queue, oldest first, waiting up to ``timeout`` seconds for the first
    (``count`` 0: only what a lost reply left in the receipt). A cancelled caller's pop hands what it took to
    ``on_interrupted``."""
    server = await connections.shard(shard)
    facts = connections.facts(shard)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # A cluster node pushes nothing when the slot of a queue that does not exist moves away, so on a cluster a waiting
    # pop looks again every CLUSTER_RECHECK seconds (a slot map this process reads anew wakes it at once).
    recheck = timeout if server.single_server() is not None else CLUSTER_RECHECK

    def attempt(sha: bool) -> Awaitable[object]:
        return _call(server, receipt.pop_args(count, ttl_ms, sha=sha), receipt, bell, on_interrupted)

    async def pop() -> object:
        bell.arm()
        try:
            return await attempt(not facts.evalsha_refused)
        except valkey_errors.NoScriptError:
            return await attempt(False)  # EVAL loads it for the next pops
        except valkey_errors.NoPermissionError as error:
            if not refuses_evalsha(error):
                raise
            facts.evalsha_refused = True
            return await attempt(False)

    # After a pop that left the queue empty, the bell armed before it has listened since: it is waited for first
    # (it rang already if anything came meanwhile) rather than a pop finding the queue empty again.
    waits_first = receipt.drained and count > 0 and timeout > 0
    receipt.drained = False
    while True:
        if not waits_first:
            reply = await pop()
            if reply is None:
                return []  # a cluster slot migrating: the caller asks again
            entries = receipt.read(reply)
            if entries or count == 0:
                return entries
        waits_first = False
        remaining = deadline - loop.time()
        if remaining <= 0:
            return []
        if not await bell.wait(min(remaining, recheck)) and remaining <= recheck:
            return []


async def _call(
    server: ShardConnection,
    args: tuple[object, ...],
    receipt: Receipt,
    bell: Doorbell,
    on_interrupted: OnPopped,
) -> object:
    """The pop's raw reply. A cancelled caller first hands what the pop took to ``on_interrupted``."""

    def orphaned(reply: asyncio.Future[object]) -> Awaitable[None]:
        return _give_back(reply, receipt, on_interrupted)

    try:
        return await server.tracked_call(args, bell, orphaned)
    except (valkey_errors.ValkeyError, OSError):
        receipt.lost()
        raise


async def _give_back(reply: asyncio.Future[object], receipt: Receipt, on_interrupted: OnPopped) -> None:
    """The reply of a pop whose caller was cancelled: what it took goes to ``on_interrupted``."""
    try:
        entries = receipt.read(await reply)
    except (valkey_errors.ValkeyError, OSError):
        receipt.lost()  # what it took (if it ran) stays in the receipt, for whoever reads it back
        return
    if entries:
        await on_interrupted(entries)


def refuses_receipts(error: BaseException) -> bool:
    """Whether ``error`` says this shard cannot pop with receipts (an ACL or server refusing ``HELLO 3``,
    ``CLIENT TRACKING`` or the scripts), so that its readers go back to ``BZMPOP``."""
    if isinstance(error, valkey_errors.NoPermissionError):
        return True
    if isinstance(error, valkey_errors.ResponseError):
        text = str(error).lower()
        return "unknown command" in text or "unknown subcommand" in text or "hello" in text
    return False
