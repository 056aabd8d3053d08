"""What both layers' bulk sends share: the checked pairs, the queue scores, the batches, and what a call reports.

``send_many`` and ``group_send_many`` check every pair before anything is written (:func:`checked_pairs`), place the
messages by shard (and by slot on a cluster, where one script call must stay in one slot), and send each place's
messages in chunks, the chunks of one place one after another, so that a queue's messages keep their order, and the
places at once (:func:`run_batches`). What a call did comes back as a :class:`SendManyResult` or a
:class:`GroupSendManyResult` rather than as an exception: after a bulk call some messages are queued and some are
not, and the caller needs to know which.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from channels_valkey.sentinel.naming import check_message, lines_pattern

if TYPE_CHECKING:
    import valkey.asyncio as avalkey

    from channels_valkey.sentinel.connections import ConnectionManager

__all__ = [
    "GroupSendManyResult",
    "ScoreClock",
    "SendManyResult",
    "checked_pairs",
    "pipelined",
    "run_batches",
]

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")
R = TypeVar("R")


@dataclass(frozen=True)
class SendManyResult:
    """What a ``send_many`` call did: how many messages it sent, and the pairs refused because their channel's
    queue was full, in the order they were given (nothing else was refused: any other failure raises)."""

    #: Messages queued or published.
    sent: int
    #: The ``(channel, message)`` pairs not sent because the channel was at capacity, in call order.
    full: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def full_channels(self) -> tuple[str, ...]:
        """The channels of :attr:`full`, once each, in the order they were first refused."""
        return tuple(dict.fromkeys(channel for channel, _ in self.full))


@dataclass(frozen=True)
class GroupSendManyResult:
    """What a ``group_send_many`` call did: how many group sends it made, and, by group, the member channels
    whose queue was full (``group_send`` drops the message for those, counts and logs them)."""

    #: Group sends made, one per pair (a pair counts also when some of its members were over capacity).
    sent: int
    #: Group -> its member channels that did not get the message because their queue was full, in member
    #: order; a group given twice lists a channel once per message it missed. Only groups with such members.
    over_capacity: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def checked_pairs(
    pairs: Iterable[tuple[str, dict[str, Any]]], check_name: Callable[[object], str], what: str
) -> list[tuple[str, dict[str, Any]]]:
    """``pairs`` as a list, once every name passed ``check_name`` and every message ``check_message``.

    The first bad pair raises the exception its single call would raise (``TypeError`` / ``ValueError``), its
    message starting with ``what`` and the pair's index, so nothing is sent when any pair is bad.
    """
    if isinstance(pairs, str | bytes | Mapping):
        raise TypeError(f"{what} takes an iterable of (name, message) pairs, not {type(pairs).__name__}")
    given = list(pairs)
    if _usual(given, check_name):
        return given
    checked: list[tuple[str, dict[str, Any]]] = []
    for index, pair in enumerate(given):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"{what}: pairs[{index}] must be a (name, message) pair, not {pair!r:.80}")
        name, message = pair
        try:
            check_name(name)
            check_message(message)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{what}: pairs[{index}]: {error}") from None
        checked.append((name, message))
    return checked


def _usual(pairs: list[Any], check_name: Callable[[object], str]) -> bool:
    """Whether every pair is the usual one, a tuple of a good ``str`` name and a plain ``dict`` message without the
    reserved key: then it passes the checks, tested here in one pass and one pattern match of all the names.

    At a microsecond or two a message for a bulk call's whole work, two check calls a pair were a tenth of it.
    Any other pair (a list, a subclass, a bad one) sends the caller to the checks one by one.
    """
    lines = lines_pattern(check_name)
    if lines is None:
        return False
    names = []
    for pair in pairs:
        if type(pair) is not tuple or len(pair) != 2:
            return False
        name, message = pair
        if type(name) is not str or type(message) is not dict or "__asgi_channel__" in message:
            return False
        names.append(name)
    joined = "\n".join(names) + "\n"
    return joined.count("\n") == len(names) and lines.fullmatch(joined) is not None


class ScoreClock:
    """Queue scores for one layer instance: the send time, but always above the last score it gave.

    A bulk call gives the messages of one queue consecutive scores one :data:`STEP` apart (equal scores would be
    ordered by their random bytes, not by send order), which can run a little ahead of the clock; the next send of
    the instance still scores after them, so one sender's messages to a channel are received in the order sent.
    """

    #: Seconds between two scores: a few units of the last place of a double near today's Unix time (2**-22 s).
    STEP = 1e-6

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()  # a layer instance is shared by the threads of async_to_sync

    def take(self, count: int = 1) -> float:
        """The first of ``count`` consecutive scores (``first + i * STEP``), all above every score given before."""
        with self._lock:
            now = time.time()
            first = now if now > self._last else self._last + self.STEP
            self._last = first + (count - 1) * self.STEP
        return first

    def spread(self, keys: Sequence[str]) -> list[float]:
        """A score for each message of a bulk call, given the queue ``keys`` they go to in call order: the
        messages of one queue get consecutive scores, in that order, all above every score given before."""
        counts = Counter(keys)
        first = self.take(max(counts.values(), default=1))
        seen: Counter[str] = Counter()
        scores = []
        for key in keys:
            scores.append(first + seen[key] * self.STEP)
            seen[key] += 1
        return scores


async def run_batches(
    batches: Mapping[K, Sequence[E]],
    send: Callable[[K, Sequence[E]], Awaitable[Sequence[R]]],
    chunk: int,
) -> tuple[list[tuple[E, R]], BaseException | None]:
    """Send every batch in chunks of at most ``chunk`` entries: a batch's chunks one after another, so entries
    to one key keep their order even through a retry, and the batches at once (calls to one server pipeline on
    its lane). ``send(key, entries)`` returns one result per entry.

    Returns each sent entry with its result, and the first failure, after every batch has finished or failed,
    so the caller counts what was sent before it raises (no batch is left running behind it).
    """

    async def one(key: K, entries: Sequence[E]) -> tuple[list[tuple[E, R]], BaseException | None]:
        done: list[tuple[E, R]] = []
        for start in range(0, len(entries), chunk):
            part = entries[start : start + chunk]
            try:
                results = await send(key, part)
            except Exception as error:
                return done, error
            done.extend(zip(part, results, strict=True))
        return done, None

    outcomes = await asyncio.gather(*(one(key, entries) for key, entries in batches.items()))
    done = [item for items, _ in outcomes for item in items]
    errors = [error for _, error in outcomes if error is not None]
    return done, errors[0] if errors else None


async def pipelined(
    connections: ConnectionManager, index: int, commands: Sequence[Sequence[Any]]
) -> list[Any]:
    """The replies of ``commands``, written to shard ``index`` (one server) at once on one connection and run in
    order: one round trip where the command lane would make a task per command.

    Not idempotent: retried as a whole only when refused before anything ran; a connection lost after the write
    raises (the caller turns it into ``ReplyLost``). For commands with no script of their own, such as ``PUBLISH``.
    """

    async def run(client: avalkey.Valkey) -> list[Any]:
        pipeline = client.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        return list(await pipeline.execute())

    return await connections.execute(index, run, idempotent=False)
