"""A command lane that is told when the keys it read change: how a queue reader waits without a blocking pop.

A blocking pop (``BZMPOP``) removes what it returns as the server answers, so a connection cut with that answer on
the wire loses it. The queue readers pop with a script instead, which also keeps what it popped in a receipt the
reader can read back after a lost reply (receipts.py); a script cannot block, so something else has to wake the
reader when a message arrives. That is server-assisted client-side tracking: on a RESP3 connection with
``CLIENT TRACKING ON``, a key read by a command (also inside a script) is remembered for the connection, and the next
change of it by any client makes the server push ``invalidate`` with the key's name, once.

:class:`TrackingLane` is a :class:`~channels_valkey.sentinel.CommandLane` on such a connection (its pool speaks
RESP3; ``NOLOOP`` keeps the lane's own pops from waking itself). A reader arms a :class:`Doorbell` for its queue's
key before each pop; the push for that key rings it. Replies and pushes travel in one stream in the order the
server produced them, so a change made after the pop read the key rings a bell armed before the pop was written.
A lost connection rings every bell: its tracking is gone with it, and each reader pops again (reading the key
again tracks it on the new connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import ConnectionPool

from channels_valkey.sentinel.lane import CommandLane, _Link
from channels_valkey.sentinel.tasks import wait_at_most

#: Deals with the reply (its future, maybe not done yet) of a command whose caller was cancelled.
OnOrphaned = Callable[[asyncio.Future[Any]], Awaitable[None]]
#: The first word of the push a tracking connection gets when a key it read changes.
INVALIDATE = b"invalidate"


class Doorbell:
    """Rung when the key it watches may have changed; a reader arms it before each pop and waits on it after an
    empty one."""

    __slots__ = ("_rung", "_waiting")

    def __init__(self) -> None:
        self._rung = False
        self._waiting: asyncio.Future[None] | None = None

    def arm(self) -> None:
        self._rung = False

    def ring(self) -> None:
        self._rung = True
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether it rang (at once if it already has) within ``timeout`` seconds."""
        if not self._rung:
            await wait_at_most(self._set_waiting(), timeout)
            self._waiting = None
        return self._rung

    def _set_waiting(self) -> asyncio.Future[None]:
        self._waiting = asyncio.get_running_loop().create_future()
        return self._waiting


class TrackingLane(CommandLane):
    """A command lane whose connection tracks the keys its commands read, ringing the doorbells armed on them."""

    def __init__(self, pool: ConnectionPool, *, on_lost: Callable[[], None] | None = None) -> None:
        super().__init__(pool, on_lost=self._rings_all_then(on_lost))
        #: The bells armed on each key (as the server names it), rung and forgotten at the key's next change.
        self._bells: dict[bytes, set[Doorbell]] = {}
        #: The reply futures of :meth:`execute_keeping` calls, each with the future its reply goes to instead if
        #: its caller is cancelled first.
        self._kept: dict[asyncio.Future[Any], asyncio.Future[Any]] = {}

    def watch(self, key: str, bell: Doorbell) -> None:
        """Ring ``bell`` at the next change of ``key`` after the next command that reads it."""
        self._bells.setdefault(key.encode(), set()).add(bell)

    def unwatch(self, key: str, bell: Doorbell) -> None:
        bells = self._bells.get(key.encode())
        if bells is not None:
            bells.discard(bell)
            if not bells:
                del self._bells[key.encode()]

    async def execute_keeping(self, on_orphaned: OnOrphaned, *args: Any) -> Any:
        """:meth:`execute_command`, except that a cancelled caller first awaits ``on_orphaned(reply)`` (shielded)
        with the future of the reply still to come, so that what it carries is dealt with before the caller ends.

        The caller awaits the lane's own future of the reply, which its cancellation cancels; the reply then goes to
        a second future, made with it, that the lane sets as it would have set the first (:meth:`_unawaited`).
        Awaiting the reply through ``asyncio.shield`` did the same at the cost of an event-loop step per reply.
        """
        reply = await self.issue(*args)
        late = self._kept[reply] = asyncio.get_running_loop().create_future()
        try:
            return await reply
        except asyncio.CancelledError:
            # Answered (or failed) before the cancellation reached it, the reply is on its own future; else it
            # comes on ``late``, now or later.
            finishing = asyncio.ensure_future(on_orphaned(late if reply.cancelled() else reply))
            # Cancelled again (a closing loop insists): the finish runs on by itself.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(finishing)
            raise
        finally:
            if not reply.cancelled():
                self._kept.pop(reply, None)

    def _unawaited(self, reply: asyncio.Future[Any], outcome: Any) -> None:
        late = self._kept.pop(reply, None)
        if late is None:
            return
        if isinstance(outcome, BaseException):
            late.set_exception(outcome)
        else:
            late.set_result(outcome)

    async def _prepare(self, link: _Link) -> None:
        """Speak RESP3 and turn tracking on, in one round trip, before the lane's commands are written; a refusal
        (the ACL, a server without tracking) is raised to the caller, which pops another way. The pool connected
        and authenticated the connection already; ``HELLO 3`` without credentials keeps that."""
        hello = self._write_on(link, ("HELLO", "3"))
        tracking = self._write_on(link, ("CLIENT", "TRACKING", "ON", "NOLOOP"))
        for outcome in await asyncio.gather(hello, tracking, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    def _answer(self, link: _Link, reply: Any) -> None:
        # No reply of the commands sent here is a list beginning with this word: the pop scripts' replies begin
        # with a number.
        if type(reply) is list and len(reply) == 2 and reply[0] == INVALIDATE:
            self._invalidated(reply[1])
            return
        super()._answer(link, reply)

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHALL / FLUSHDB: every key
            self.ring_all()
            return
        for key in keys:
            for bell in self._bells.pop(bytes(key), ()):
                bell.ring()

    def ring_all(self) -> None:
        """Ring every bell: each reader pops again (the connection was lost, or the keys' slots may have moved)."""
        bells, self._bells = self._bells, {}
        for armed in bells.values():
            for bell in armed:
                bell.ring()

    def _rings_all_then(self, on_lost: Callable[[], None] | None) -> Callable[[], None]:
        def lost() -> None:
            self.ring_all()
            if on_lost is not None:
                on_lost()

        return lost

    async def aclose(self, *, keep_connection: bool = False) -> None:
        """As the command lane's; a connection kept for the park (the loop is closing) first turns its tracking
        off. A parked socket that speaks before it is taken is thrown away (parking.py), and a tracking one would
        be told of the next change of the queue it read: without this, every ``async_to_sync(layer.receive)``
        opened a new connection."""
        if keep_connection and self._link is not None and self._link.usable:
            try:
                await self.execute_command("CLIENT", "TRACKING", "OFF")
            except (valkey_errors.ValkeyError, OSError):
                keep_connection = False
        await super().aclose(keep_connection=keep_connection)
        self.ring_all()
