"""One shard's Pub/Sub connection on one event loop, and the listener task that owns it.

Consumers never read from or reconnect this connection: they only say which names they want (``subscribe`` /
``unsubscribe``), and a listener task, which no consumer can cancel, keeps the server in line with that wish. When
the connection is lost the listener reports it (the layer sends ``on_disconnect`` notices), reconnects with backoff,
restores every wanted name in one ``SUBSCRIBE``, and once the server has confirmed them all reports that too (the
``on_reconnect`` notices). The connection comes from the shard's command pool, so a Sentinel failover, which drops
every connection of the pool, moves it to the new primary like any other.

The same class, with the sharded commands (``SSUBSCRIBE``...), serves one node of a Valkey Cluster for
:mod:`channels_valkey.pubsub.cluster_subscriber`, which decides which names each node holds; the hooks it overrides
are ``_batches``, ``_ever_connected`` and the ``_on_...`` methods below.

What it offers the loop state and reports to it (``Subscriptions``, ``Sink``) is in
:mod:`channels_valkey.pubsub.subscriptions`; the matching of replies to the commands written, and the confirmations
consumers wait for, in :mod:`channels_valkey.pubsub.replies`; the connection the listener holds (``Link``), and how a
write on it fails once it is gone, in :mod:`channels_valkey.pubsub.link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import ClassVar

from valkey import exceptions as valkey_errors
from valkey.asyncio.connection import AbstractConnection

from channels_valkey.pubsub.link import Link, lost_at_write, text
from channels_valkey.pubsub.replies import Confirmations
from channels_valkey.pubsub.subscriptions import Sink
from channels_valkey.sentinel import (
    BackgroundTask,
    Failure,
    ResiliencePolicy,
    Retries,
    Shard,
    ShardUnavailable,
    cancel_and_wait,
    classify,
    feed_replies,
    raise_if_cancelling,
    read_reply,
)

logger = logging.getLogger("channels_valkey.pubsub")


#: Most seconds between two looks of the keep-alive task at its connection.
KEEPALIVE_TICK = 1.0
#: Seconds a connection must have lasted for the next reconnection to start without backoff.
HEALTHY_CONNECTION = 5.0


class Subscriber:
    """The Pub/Sub state of shard ``index`` on the running event loop."""

    #: The commands written for each kind of request, and the kinds of the replies and messages that come back.
    COMMANDS: ClassVar[dict[str, str]] = {"SUBSCRIBE": "SUBSCRIBE", "UNSUBSCRIBE": "UNSUBSCRIBE"}
    MESSAGE: ClassVar[str] = "message"
    SUBSCRIBED: ClassVar[str] = "subscribe"
    UNSUBSCRIBED: ClassVar[str] = "unsubscribe"

    def __init__(
        self, index: int, shard: Callable[[], Awaitable[Shard]], policy: ResiliencePolicy, sink: Sink
    ) -> None:
        self.index = index
        self._shard = shard
        self.policy = policy
        self.sink = sink
        #: The first element of a pushed message, as bytes or as text (see :meth:`_on_any_reply`).
        self._message_kinds = (self.MESSAGE.encode(), self.MESSAGE)
        #: Names this loop wants subscribed on the shard; restored after every reconnection.
        self.wanted: set[str] = set()
        #: Wanted names the server confirmed on the current connection.
        self.confirmed: set[str] = set()
        #: How many times the listener connected (tests and monitoring).
        self.connections_made = 0
        self._outstanding: dict[str, int] = {}
        self._confirmations = Confirmations()
        self._link: Link | None = None
        self._restoring: set[str] | None = None
        self._down_announced = False
        self._pings = True
        self._task: BackgroundTask | None = None
        #: Failed connection attempts since the listener last held a connection.
        self.connect_failures = 0

    # What consumers call ------------------------------------------------------------------------------------

    async def subscribe(self, names: Iterable[str], *, wait: bool) -> None:
        """Want ``names`` subscribed; with ``wait``, return once the server confirmed them all.

        Raises the shard's error when it cannot be used at all, ``NoPermissionError`` when the ACL refuses the
        subscription, and ``valkey.TimeoutError`` when no confirmation came within the policy's retry deadline
        (the names stay wanted and are subscribed as soon as the shard answers).
        """
        names = list(names)
        new = [name for name in names if name not in self.wanted]
        self.wanted.update(new)
        self._ensure_listener()
        if new:
            await self._write("SUBSCRIBE", new)
        if not wait:
            return
        await self._confirmations.wait(
            [name for name in names if name not in self.confirmed],
            self.policy.retry_deadline,
            f"shard {self.index}: the server did not confirm SUBSCRIBE {names[:3]}",
            "restored when the shard answers",
        )

    async def unsubscribe(self, names: Iterable[str]) -> None:
        """Stop wanting ``names``; the server is told at once when connected (a new connection never has them)."""
        gone = [name for name in names if name in self.wanted]
        if not gone:
            return
        for name in gone:
            self.wanted.discard(name)
            self.confirmed.discard(name)
            # Whoever waits for it has nothing left to wait for.
            self._confirmations.settle(name)
        if not self.wanted:
            # Sets keep the table of their largest size; after a burst of consumers, give it back.
            self.wanted, self.confirmed = set(), set()
        if self._restoring is not None:
            self._restoring.difference_update(gone)
            self._check_restored()
        await self._write("UNSUBSCRIBE", gone)

    @property
    def live(self) -> bool:
        """Whether the listener holds a working connection right now."""
        return self._link is not None

    @property
    def listening(self) -> bool:
        """Whether the listener runs (connected or trying to); it stops for good only when the shard is unusable."""
        return self._task is not None and not self._task.work.done()

    async def aclose(self) -> None:
        """Stop the listener and let go of its connection; waiting confirmations are cancelled."""
        task, self._task = self._task, None
        if task is not None:
            await task.stop()
        self._confirmations.settle_all(
            valkey_errors.ConnectionError(f"shard {self.index}: the layer's connections were closed")
        )

    # Writing ------------------------------------------------------------------------------------------------

    async def _write(self, kind: str, names: list[str]) -> None:
        link = self._link
        # Checked without an await before the write, so valkey-py never reconnects this connection on a
        # consumer's behalf: a connection the listener has not restored gets nothing, the restore covers it.
        if link is None or not link.connection.is_connected:
            return
        if kind == "SUBSCRIBE":
            for name in names:
                self._outstanding[name] = self._outstanding.get(name, 0) + 1
        command = self.COMMANDS[kind]
        for batch in self._batches(names):
            link.sent.wrote(kind, tuple(batch))
            try:
                await link.connection.send_command(command, *batch, check_health=False)
            except Exception as error:
                if not lost_at_write(error):
                    raise
                # The listener sees the same failure on its next read and restores everything wanted.
                logger.debug("shard %d: writing %s failed (%s)", self.index, command, error)
                return

    def _batches(self, names: list[str]) -> list[list[str]]:
        """How ``names`` are split into commands (one here; a cluster node takes one slot per command)."""
        return [names]

    # The listener -------------------------------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._task is None or self._task.work.done():
            # A BackgroundTask: a loop closed by asyncio.run (each async_to_sync call) cancels the listener once,
            # valkey-py can lose that cancellation while a SUBSCRIBE is written, and the listener would then read
            # for ever and the loop, and the call that made it, never end.
            self._task = BackgroundTask(self._listen(), f"channels-valkey pubsub listener shard {self.index}")

    async def _listen(self) -> None:
        shard = await self._shard()
        pool = shard.client.connection_pool
        # Unbounded: the listener comes back whenever the server does.
        retries = Retries(
            self.policy,
            f"{shard.describe()}: Pub/Sub connection",
            logger=logger,
            bounded=False,
            on_retry=shard.counts.reconnected,
        )
        while True:
            raise_if_cancelling()
            try:
                connection = await pool.get_connection("SUBSCRIBE")
            except Exception as error:
                failure = classify(error)
                if failure is Failure.FATAL or not self._ever_connected(shard):
                    self._fail(ShardUnavailable(shard.describe(), error))
                    return
                self.connect_failures += 1
                retries.failed()
                await retries.wait(error)
                continue
            shard.ever_connected = True
            self.connect_failures = 0
            self.connections_made += 1
            started = time.monotonic()
            try:
                await self._serve(connection)
            except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as error:
                logger.warning("%s: Pub/Sub connection lost (%s); reconnecting", shard.describe(), error)
                shard.counts.reconnected()
            finally:
                self._link = None
                self.confirmed.clear()
                self._outstanding.clear()
                self._restoring = None
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
                with contextlib.suppress(Exception):
                    await pool.release(connection)
            # A closing loop cancels this task once; valkey-py may have turned that into the error just caught.
            raise_if_cancelling()
            self._announce_down()
            # After a connection that served well the first reconnection is immediate (a failover has moved the
            # pool already); a server that drops every new connection at once is retried with backoff.
            if time.monotonic() - started > HEALTHY_CONNECTION:
                retries.succeeded()
            else:
                retries.failed()
                await asyncio.sleep(retries.delay())  # the loss is logged above

    def _ever_connected(self, shard: Shard) -> bool:
        """Whether a failed connection is worth retrying: the server was reachable once."""
        return shard.ever_connected

    async def _serve(self, connection: AbstractConnection) -> None:
        link = self._link = Link(connection)
        # Messages are handled where their bytes arrive (feed_replies), one event-loop step sooner than a read
        # here would see them; this task then only waits for the connection's end.
        lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        def on_lost(error: BaseException) -> None:
            if not lost.done():
                lost.set_result(error)

        feeding = feed_replies(connection, functools.partial(self._on_any_reply, link), on_lost)
        names = list(self.wanted)
        if self._down_announced:
            self._restoring = set(names)
        if names:
            await self._write("SUBSCRIBE", names)
            # valkey-py writes under asyncio.wait_for, which before Python 3.12 drops a cancellation that arrives
            # as the write completes (or turns it into a connection error, which _write absorbs): the listener must
            # still stop, since a closing loop waits for it.
            raise_if_cancelling()
        self._check_restored()
        watchdog = asyncio.get_running_loop().create_task(
            self._keep_alive(link), name=f"channels-valkey pubsub keep-alive shard {self.index}"
        )
        try:
            while True:
                try:
                    if feeding:
                        raise await lost
                    reply = await read_reply(connection)
                except (valkey_errors.ConnectionError, OSError) as error:
                    if link.failure is not None:
                        raise link.failure from error
                    raise
                self._on_any_reply(link, reply)
        finally:
            await cancel_and_wait(watchdog)

    async def _keep_alive(self, link: Link) -> None:
        """PING an idle connection; abort it when the answer is overdue, which fails the listener's read.

        Reads wait without a timeout of their own (a timeout around every message costs more than the message),
        so this task is what notices a server that went silent.
        """
        interval = self.policy.health_check_interval
        tick = min(KEEPALIVE_TICK, interval) if interval else KEEPALIVE_TICK
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if link.ping_sent is not None:
                if now - link.ping_sent > self.policy.socket_timeout:
                    link.failure = valkey_errors.TimeoutError(
                        f"no answer to PING in {self.policy.socket_timeout:g}s"
                    )
                    await link.connection.disconnect(nowait=True)
                    return
                continue
            if self._pings and interval and now - link.last_read >= interval:
                link.ping_sent = now
                link.sent.wrote("PING")
                try:
                    await link.connection.send_command("PING", check_health=False)
                except Exception as error:
                    if not lost_at_write(error):
                        raise
                    return  # the listener's read fails the same way

    # Replies ------------------------------------------------------------------------------------------------

    def _on_any_reply(self, link: Link, reply: object) -> None:
        link.last_read = time.monotonic()
        if isinstance(reply, list) and len(reply) == 3 and reply[0] in self._message_kinds:
            # Almost every reply is a message: handed on here, without _on_reply sorting it from the rest.
            self.sink.on_message(text(reply[1]), reply[2])
        elif isinstance(reply, valkey_errors.ResponseError):
            self._on_error_reply(link, reply)
        else:
            self._on_reply(link, reply)

    def _on_reply(self, link: Link, reply: object) -> None:
        if reply == b"PONG" or reply == "PONG":  # a connection with no subscription answers PING plainly
            self._on_pong(link)
            return
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == self.SUBSCRIBED:
            link.sent.take_reply()
            self._on_subscribed(text(reply[1]))
        elif kind == self.UNSUBSCRIBED:
            name = text(reply[1])
            if link.sent.answers("UNSUBSCRIBE", name):
                link.sent.take_reply()
            else:
                # Nobody asked: the server dropped the subscription (a cluster node whose slot moved away).
                self._on_pushed_out(name)
        elif kind == "pong":
            self._on_pong(link)

    def _on_pushed_out(self, name: str) -> None:
        logger.warning("shard %d: the server ended the subscription of %s unasked", self.index, name)

    def _on_pong(self, link: Link) -> None:
        link.sent.take_reply()
        link.ping_sent = None

    def _on_subscribed(self, name: str) -> None:
        left = self._outstanding.get(name, 0) - 1
        if left > 0:
            self._outstanding[name] = left
            return
        self._outstanding.pop(name, None)
        if not self._outstanding:
            self._outstanding = {}
        if name not in self.wanted:
            return
        self.confirmed.add(name)
        self._confirmations.settle(name)
        if self._restoring is not None:
            self._restoring.discard(name)
            self._check_restored()

    def _on_error_reply(self, link: Link, error: valkey_errors.ResponseError) -> None:
        head = link.sent.take_error()
        if head is None:
            logger.warning(
                "shard %d: unexpected error reply on the Pub/Sub connection: %s", self.index, error
            )
            return
        if head.kind == "PING":
            link.ping_sent = None
            if isinstance(error, valkey_errors.NoPermissionError):
                self._pings = False
                logger.warning(
                    "shard %d: the ACL refuses PING; the Pub/Sub connection relies on TCP keepalive",
                    self.index,
                )
            return
        if head.kind == "SUBSCRIBE":
            self._on_refused(head.names, error)
        else:
            logger.debug("shard %d: %s %s failed: %s", self.index, head.kind, list(head.names[:3]), error)

    def _on_refused(self, names: tuple[str, ...], error: valkey_errors.ResponseError) -> None:
        """The server refused to subscribe ``names`` (an ACL): they are no longer wanted, waiters get the error."""
        logger.error("shard %d: SUBSCRIBE %s refused: %s", self.index, list(names[:3]), error)
        self.forget(names)
        for name in names:
            self._confirmations.settle(name, error)

    def forget(self, names: Iterable[str]) -> None:
        """Stop wanting ``names`` without telling the server (it dropped or refused them itself)."""
        names = list(names)
        for name in names:
            self._outstanding.pop(name, None)
            self.wanted.discard(name)
            self.confirmed.discard(name)
        if self._restoring is not None:
            self._restoring.difference_update(names)
            self._check_restored()

    # Connection state ---------------------------------------------------------------------------------------

    def _check_restored(self) -> None:
        if self._restoring is None or self._restoring:
            return
        self._restoring = None
        self._down_announced = False
        self.sink.on_restored(self, self.wanted)

    def _announce_down(self) -> None:
        if not self._down_announced:
            self._down_announced = True
            self.sink.on_down(self, self.wanted)

    @property
    def down(self) -> bool:
        """Whether the listener lost its connection, or failed to connect, and has not recovered yet."""
        return self._link is None and (self._down_announced or self.connect_failures > 0)

    def _fail(self, error: BaseException) -> None:
        logger.error("shard %d: cannot subscribe: %s", self.index, error)
        self._confirmations.settle_all(error)
        self.sink.on_failed(self, self.wanted, error)
