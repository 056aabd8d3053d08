"""Groups of the core layer: ``group_add``, ``group_discard``, ``group_channels`` and ``group_send``.

A ``group_send`` must read the group's members before it can write to their queues, which took two round trips:
one script reading the members, one queueing the message. Most sends go to a group this layer sent to a moment
ago, whose members have not changed since; so the layer remembers the members it last read of recent small groups
(:class:`MemberGuesses`), and sends the message together with that guess in one script call. The server checks the
guess against the group as it is (after expiring old members) and queues the message only when they match;
otherwise it answers with the members, and the send goes on as it would have without a guess. A wrong guess
therefore costs what no guess costs, and nothing is written for a membership that is not the group's.

A guess is only sent where one script may touch all its keys: every queue of the guessed members on the group's
shard (always, with one server or one Sentinel service), never on a Valkey Cluster, where group and queues hash
to different slots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

from valkey import exceptions as valkey_errors

from channels_valkey.core import scripts
from channels_valkey.core.layer_parts import LayerParts
from channels_valkey.sentinel import (
    ShardRing,
    check_channel,
    check_group,
    check_message,
    every_result,
    is_process_channel,
    raise_if_reply_lost,
    slot_of,
)

logger = logging.getLogger("channels_valkey.core")

#: One queue of a group_send: its key, the message as stored there, and the queue's capacity.
_Target = tuple[str, bytes, int]


#: Where a channel's messages go: its queue's key, place (shard, and slot on a cluster) and capacity.
QueueOf = tuple[str, tuple[int, int], int]
#: One copy of a group message: where it goes (shard, and slot on a cluster), the queue, the channels it is for, its
#: bytes and the queue's capacity. A plain tuple: a bulk send makes one per group and member process.
QueueCopy = tuple[tuple[int, int], str, list[str], bytes, int]
T = TypeVar("T")


def _by_place(copies: list[QueueCopy]) -> dict[tuple[int, int], list[_Target]]:
    """A group message's copies by place (shard, and slot on a cluster): each queue with its bytes and capacity."""
    batches: dict[tuple[int, int], list[_Target]] = defaultdict(list)
    for place, key, _, member, capacity in copies:
        batches[place].append((key, member, capacity))
    return batches


async def _total(calls: list[Coroutine[Any, Any, int]]) -> int:
    return sum(await every_result(calls))


class MemberGuesses:
    """The members last read of up to :attr:`GROUPS` recent groups of at most ``MAX_KEYS_PER_CALL`` members.

    Shared by every thread and event loop using the layer; the least recently used group is forgotten first. A
    guess is never trusted: the server checks it.
    """

    #: Groups remembered: at most about 6 MB of names (100 members of 60 characters each).
    GROUPS = 1024

    def __init__(self) -> None:
        self._members: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, group: str) -> tuple[str, ...] | None:
        """The members ``group`` had when last read here, or None."""
        with self._lock:
            members = self._members.get(group)
            if members is not None:
                self._members.move_to_end(group)
            return members

    def remember(self, group: str, members: list[str]) -> None:
        """Keep ``members`` as ``group``'s guess (a group too large for one script call is forgotten instead)."""
        with self._lock:
            if len(members) > scripts.MAX_KEYS_PER_CALL:
                self._members.pop(group, None)
                return
            self._members[group] = tuple(members)
            self._members.move_to_end(group)
            if len(self._members) > self.GROUPS:
                self._members.popitem(last=False)

    def forget(self, group: str | None = None) -> None:
        """Forget ``group``'s guess (it changed here), or every guess."""
        with self._lock:
            if group is None:
                self._members.clear()
            else:
                self._members.pop(group, None)


class GroupMethods(LayerParts):
    """The layer's group methods, mixed into :class:`~channels_valkey.core.ValkeyChannelLayer`."""

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (again: its membership is renewed for ``group_expiry`` seconds)."""
        check_group(group)
        check_channel(channel)
        self._guesses.forget(group)
        args = [repr(time.time()), channel, int(self.group_expiry)]
        ring = await self.shard_ring()
        await scripts.GROUP_ADD_SCRIPT.run(
            self._connections, ring.index(group), [self.group_key(group)], args, idempotent=True
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` (nothing happens when it is not a member)."""
        check_group(group)
        check_channel(channel)
        self._guesses.forget(group)
        ring = await self.shard_ring()
        await self._connections.execute_command(
            ring.index(group), "ZREM", self.group_key(group), channel, idempotent=True
        )

    async def group_channels(self, group: str) -> list[str]:
        """The channels in ``group`` now (members older than ``group_expiry`` are removed first)."""
        check_group(group)
        ring = await self.shard_ring()
        shard, key = ring.index(group), self.group_key(group)
        members = await scripts.GROUP_MEMBERS_SCRIPT.run(
            self._connections, shard, [key], [self._cutoff(), scripts.MEMBERS_IN_SCRIPT], idempotent=True
        )
        return await self._read_members(shard, key, members)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every channel of ``group``; full queues drop it (counted and logged)."""
        if (sync := self._hand_off_to()) is not None:
            await sync.hand_off(GroupMethods.group_send(self, group, message))
            return
        check_group(group)
        check_message(message)
        # Encoded before the members are read: a message over max_message_bytes raises before anything is written.
        # Normal channels' queues all store these bytes (distinct queues need no distinct random prefixes).
        plain = self._payload(message, "group", group)
        ring = await self.shard_ring()
        shard, key = ring.index(group), self.group_key(group)
        # A guess goes with the members' read when all its queues are on the group's shard (and slot, on a
        # cluster: a script's keys share one); else the read guesses no member, and the queues wait for it.
        guess = self._guesses.get(group)
        targets: list[_Target] = []
        if guess:
            batches = _by_place(self._copies(ring, group, message, plain, guess))
            targets = batches.get((shard, slot_of(key) if self.cluster else 0), [])
            if len(batches) > 1 or not targets:
                guess, targets = None, []
        now = repr(self._clock.take())
        sending = self._send_if_members(shard, key, now, guess or (), targets)
        # Without a guess the call only reads (and is retried as reads are): a lost reply then lost no message.
        answer = await (self._writing(group, sending) if targets else sending)
        if isinstance(answer, int):
            self._sent(group, guess or (), answer)
            return
        channels = await self._read_members(shard, key, answer)
        self._guesses.remember(group, channels)
        calls = [
            self._group_send_batch(place[0], now, targets[start : start + scripts.MAX_KEYS_PER_CALL])
            for place, targets in _by_place(self._copies(ring, group, message, plain, channels)).items()
            for start in range(0, len(targets), scripts.MAX_KEYS_PER_CALL)
        ]
        # One call (a group on one server) is awaited as it is: gather would add a task for nothing.
        dropped = await self._writing(group, calls[0] if len(calls) == 1 else _total(calls))
        self._sent(group, channels, dropped)

    @staticmethod
    async def _writing(group: str, call: Awaitable[T]) -> T:
        """``call``'s result; a connection lost after it may have written raises ``ReplyLost``."""
        try:
            return await call
        except (valkey_errors.ConnectionError, valkey_errors.TimeoutError) as error:
            raise_if_reply_lost(error, f"group_send to {group!r}")
            raise

    def _copies(
        self,
        ring: ShardRing,
        group: str,
        message: dict[str, Any],
        plain: bytes,
        channels: Sequence[str],
        queues: dict[str, QueueOf] | None = None,
    ) -> list[QueueCopy]:
        """The copies of a group message to ``channels``, one per queue key: process channels of one process share
        their queue, and its copy names them all; every normal channel's queue stores ``plain``.

        ``queues`` holds where channels' messages go, filled in as channels are met: a bulk call passes one for all
        its groups, whose members are mostly the same few processes' channels.
        """
        if queues is None:
            queues = {}
        by_key: dict[str, tuple[QueueOf, list[str]]] = {}
        for channel in channels:
            queue = queues.get(channel)
            if queue is None:
                queue = queues[channel] = self._queue_of(ring, channel)
            shared = by_key.get(queue[0])
            if shared is None:
                by_key[queue[0]] = (queue, [channel])
            else:
                shared[1].append(channel)
        copies: list[QueueCopy] = []
        for (key, place, capacity), names in by_key.values():
            member = plain
            if is_process_channel(names[0]):
                member = self._payload({**message, "__asgi_channel__": names}, "group", group)
            copies.append((place, key, names, member, capacity))
        return copies

    def _queue_of(self, ring: ShardRing, channel: str) -> QueueOf:
        """Where ``channel``'s messages go: its queue's key, place and capacity."""
        key = self.queue_key(channel)
        place = (self._shard_of_channel(ring, channel), slot_of(key) if self.cluster else 0)
        return key, place, self.get_capacity(channel)

    async def _send_if_members(
        self, shard: int, key: str, now: str, guess: tuple[str, ...], targets: list[_Target]
    ) -> Any:
        """Queue the message in ``targets`` if ``group`` has exactly the members ``guess`` names: the number of full
        queues; else the members (or None for a group too large for a script's reply), nothing written."""
        keys = [key, *(queue for queue, _, _ in targets)]
        args = [
            self._cutoff(),
            scripts.MEMBERS_IN_SCRIPT,
            now,
            int(self.expiry),
            len(guess),
            *guess,
            *(capacity for _, _, capacity in targets),
            *(member for _, member, _ in targets),
        ]
        # Not idempotent when it may write: each member carries a fresh random prefix, so a retry after a lost
        # reply could deliver twice. Only calls refused before they ran are retried.
        return await scripts.GROUP_SEND_IF_MEMBERS_SCRIPT.run(
            self._connections, shard, keys, args, idempotent=not targets
        )

    async def _group_send_batch(self, shard: int, now: str, batch: list[_Target]) -> int:
        keys = [key for key, _, _ in batch]
        args = [now, int(self.expiry), *(cap for _, _, cap in batch), *(member for _, member, _ in batch)]
        # Not idempotent, as above.
        return int(
            await scripts.GROUP_SEND_SCRIPT.run(self._connections, shard, keys, args, idempotent=False)
        )

    async def _read_members(self, shard: int, key: str, members: list[bytes] | None) -> list[str]:
        """The members a script answered, or, for a group too large for a script's reply, read by ZRANGE."""
        if members is None:  # a plain ZRANGE costs the server far less than a script's reply of a large group
            members = await self._connections.execute_command(shard, "ZRANGE", key, 0, -1, idempotent=True)
        return [member.decode() for member in members]

    def _cutoff(self) -> str:
        """Members added before this time have expired."""
        return repr(time.time() - self.group_expiry)

    def _sent(self, group: str, channels: tuple[str, ...] | list[str], dropped: int) -> None:
        self._counts.sent["group"] += 1
        self._counts.fanout.record(len(channels))
        if dropped:
            self.counters.group_over_capacity += dropped
            # Worded as channels-valkey 0.3 words it: log-based alerts keep matching after an upgrade.
            queues = len({self.queue_key(channel) for channel in channels})
            logger.info("%d of %d channels over capacity in group %s", dropped, queues, group)
