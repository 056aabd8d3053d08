"""What the server owes a subscriber: a reply to each command written, a confirmation to each caller waiting.

A Pub/Sub connection answers in the order commands were written: ``SUBSCRIBE a b`` gets one reply per name,
``PING`` one, and a refused command one error reply for the whole of it. :class:`SentCommands` remembers each
command until its replies are in, so that an error reply (an ACL refusing ``PING`` or a channel) is pinned on the
right command, and an ``unsubscribe`` nobody asked for is told from the answer to an ``UNSUBSCRIBE``.

Callers that subscribe with ``wait=True`` wait on a future per name until the server confirms it, refuses it, or the
subscriber gives up; :class:`Confirmations` holds those futures, for a plain subscriber and a cluster subscriber alike.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from valkey import exceptions as valkey_errors


@dataclass(eq=False)
class Sent:
    """A command written to the connection whose replies are not all in yet."""

    kind: str
    names: tuple[str, ...]
    replies_left: int


class SentCommands:
    """The commands written on one connection whose replies are not all in, oldest first."""

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: deque[Sent] = deque()

    def wrote(self, kind: str, names: tuple[str, ...] = ()) -> None:
        """``kind`` was written for ``names``: one reply is due per name (one for a command without names)."""
        self._sent.append(Sent(kind, names, max(1, len(names))))

    def take_reply(self) -> None:
        """One reply to the oldest command came in."""
        if not self._sent:
            return
        head = self._sent[0]
        head.replies_left -= 1
        if head.replies_left <= 0:
            self._sent.popleft()

    def take_error(self) -> Sent | None:
        """The oldest command was refused (its only reply); which command that was, if any was waiting."""
        return self._sent.popleft() if self._sent else None

    def answers(self, kind: str, name: str) -> bool:
        """Whether a reply about ``name`` is the one the oldest command written, of ``kind``, waits for next.

        Replies come in the order of the names of the command; anything else about ``name`` is a message the server
        pushed on its own.
        """
        if not self._sent:
            return False
        head = self._sent[0]
        if head.kind != kind or not head.names:
            return False
        return head.names[len(head.names) - head.replies_left] == name


class Confirmations:
    """The futures of the subscriptions callers wait for, by name, until each is settled."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def wait(self, names: Iterable[str], deadline: float, unconfirmed: str, kept: str) -> None:
        """Wait until each of ``names`` is settled; after ``deadline`` seconds raise a TimeoutError saying
        ``unconfirmed`` and that the subscriptions are kept and ``kept`` (shielded: the wait ends, they stay wanted).

        Raises the error a name was settled with (refused, or the subscriber failed or closed).
        """
        pending = [self._future(name) for name in names]
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(f) for f in pending)), deadline)
        except asyncio.TimeoutError:
            raise valkey_errors.TimeoutError(
                f"{unconfirmed} within {deadline:g}s; the subscription is kept and {kept}"
            ) from None

    def settle(self, name: str, error: BaseException | None = None) -> None:
        """Whoever waits for ``name`` stops waiting: it is confirmed, or no longer wanted, or (``error``) failed."""
        _settle(self._waiting.pop(name, None), error)

    def settle_all(self, error: BaseException) -> None:
        """Every waiter gets ``error`` (the subscriber closed or cannot subscribe at all)."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            _settle(future, error)

    def _future(self, name: str) -> asyncio.Future[None]:
        """The future that the confirmation of ``name`` will settle (a new one if none is pending)."""
        future = self._waiting.get(name)
        if future is None or future.done():
            future = self._waiting[name] = asyncio.get_running_loop().create_future()
            # Read the outcome even when the waiter gave up first, so no failure is reported as unretrieved.
            future.add_done_callback(_retrieve_outcome)
        return future


def _settle(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _retrieve_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
