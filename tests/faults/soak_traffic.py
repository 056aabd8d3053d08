"""The soak's traffic on one layer: what a Channels site keeps doing for hours, with every error counted instead of
raised, so that no fault ends it, and a way to bring it to rest (imported as ``faults.soak_traffic``).

Everything long-lived in a layer is exercised: a normal channel streamed through (``send`` and ``send_many``), process
channels made with ``new_channel()`` and received, consumers joining and leaving groups under new names all the
time (a per-channel record that is never freed shows as growth), ``group_send`` and ``group_send_many``, and calls
from a plain thread (``layer.sync`` and ``async_to_sync``, a new event loop per call).

The test's own records are counters and a few kept error texts: none grows with the traffic, so that tracemalloc's
net growth is the layers' (a received number kept in a list would be allocated by the serializer, and count as
theirs). The stream is checked with one number: one sender and one receiver keep a channel's order, so every number
received must be above the last one (nothing twice, nothing out of order).

:meth:`Traffic.pause` brings the layer to rest: the producers stop, the consumers leave their groups and go, and
the receivers drain what is left; then memory, the layers' tables and the server's keys can be compared between two
moments when nothing is in flight.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import valkey
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from channels_valkey.sentinel import ReplyLost

from faults.support import settles

#: What a fault may make a layer call raise; anything else is a bug and is recorded as a crash.
EXPECTED_ERRORS = (valkey.ValkeyError, ChannelFull, asyncio.TimeoutError, TimeoutError)

ROOMS = [f"room{index}" for index in range(4)]
#: Consumers alive at any time; each joins two rooms and lives 1 to 4 seconds, then the next one takes its place.
CONSUMERS = 6
LIFETIMES = (1.0, 2.5, 4.0, 1.5, 3.0)
#: Pacing of the producers (seconds between steps): a steady load the two layers, the server and tracemalloc's
#: overhead share with the machine's other work, not the most they can do.
STREAM_STEP = 0.005
GROUP_STEP = 0.02
SYNC_STEP = 0.1
#: Every this many steps the stream sends a batch with ``send_many`` and the groups one ``group_send_many``.
BULK_EVERY = 20
BULK_SIZE = 10
#: Longest a receive waits before it is cancelled and started again (cancelled receives are part of the load).
RECEIVE_WAIT = 0.5
#: Longest a consumer keeps trying to leave its groups through faults before it counts a failure.
LEAVE_TIMEOUT = 30.0
#: Errors kept as text per kind, for the report.
KEPT_ERRORS = 3


class Tally:
    """Counts by name, and the first few texts of each kind of error."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.kept: dict[str, list[str]] = {}
        self.crashes: list[str] = []

    def error(self, where: str, error: BaseException) -> None:
        kind = f"{where}: {type(error).__name__}"
        self.errors[kind] += 1
        kept = self.kept.setdefault(kind, [])
        if len(kept) < KEPT_ERRORS:
            kept.append(str(error)[:200])

    def crash(self, where: str, error: BaseException) -> None:
        if len(self.crashes) < KEPT_ERRORS * 4:
            self.crashes.append(f"{where}: {type(error).__name__}: {error}")


class Traffic:
    """All the soak's traffic on ``layer``: tasks on the running event loop and one thread of sync calls."""

    def __init__(self, name: str, layer: Any) -> None:
        self.name = name
        self.layer = layer
        self.tally = Tally()
        #: The sync calls' thread counts apart: two threads adding to one Counter could lose counts.
        self.sync_tally = Tally()
        #: Set while producers may run; cleared by :meth:`pause`.
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False
        self._parked = 0
        self._producers = 0
        self._consumers: dict[str, asyncio.Task[None]] = {}
        #: Channels of the consumers alive now, for direct messages.
        self._members: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._receiver_parked = False
        self._last_stream = -1
        self._sync_running = threading.Event()
        self._sync_running.set()
        self._sync_idle = threading.Event()
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None

    # Life cycle --------------------------------------------------------------------------------------------------

    def start(self) -> Traffic:
        producers = (self._stream, self._groups, self._supervise_consumers)
        self._producers = len(producers)
        for work in (*producers, self._receive_stream):
            self._tasks.append(
                asyncio.create_task(self._guarded(work), name=f"soak {self.name} {work.__name__}")
            )
        self._sync_thread = threading.Thread(
            target=self._sync_calls, name=f"soak {self.name} sync", daemon=True
        )
        self._sync_thread.start()
        return self

    async def pause(self, timeout: float) -> bool:
        """Stop producing, let every consumer leave and the stream drain; True once all of it stopped within
        ``timeout``."""
        self._running.clear()
        self._sync_running.clear()
        return await settles(
            lambda: (
                self._producers_parked()
                and self._receiver_parked
                and not self._consumers
                and self._sync_idle.is_set()
            ),
            timeout,
        )

    def _producers_parked(self) -> bool:
        return self._parked == self._producers

    def resume(self) -> None:
        self._sync_idle.clear()
        self._sync_running.set()
        self._running.set()

    async def stop(self, timeout: float) -> bool:
        """Bring the traffic to rest, then end every task and the thread; True when it came to rest in time."""
        rested = await self.pause(timeout)
        self._stopping = True
        self._sync_stop.set()
        self._running.set()
        await asyncio.gather(*self._tasks)
        for task in list(self._consumers.values()):
            await task
        if self._sync_thread is not None:
            await asyncio.to_thread(self._sync_thread.join)
        return rested

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception as error:  # a bug: recorded, and the test fails on it
            self.tally.crash(work.__name__, error)

    async def _go_on(self) -> bool:
        """Whether a producer goes on; while paused it waits here, counted as parked."""
        if not self._running.is_set():
            self._parked += 1
            try:
                await self._running.wait()
            finally:
                self._parked -= 1
        return not self._stopping

    # The stream: one normal channel, one sender, one receiver -----------------------------------------------------

    async def _stream(self) -> None:
        layer, counts = self.layer, self.tally.counts
        numbers = itertools.count()
        for step in itertools.count():
            if not await self._go_on():
                return
            batch = [next(numbers) for _ in range(BULK_SIZE if step % BULK_EVERY == 0 else 1)]
            try:
                if len(batch) == 1:
                    await layer.send("stream", {"type": "stream", "n": batch[0]})
                    counts["stream acknowledged"] += 1
                else:
                    result = await layer.send_many([("stream", {"type": "stream", "n": n}) for n in batch])
                    counts["stream acknowledged"] += result.sent
                    counts["stream full"] += len(result.full)
            except ReplyLost as error:
                counts["stream reply lost"] += len(batch)
                self.tally.error("stream send", error)
            except ChannelFull:
                counts["stream full"] += 1
            except EXPECTED_ERRORS as error:
                counts["stream not sent"] += len(batch)
                self.tally.error("stream send", error)
            await asyncio.sleep(STREAM_STEP)  # pacing, see STREAM_STEP

    async def _receive_stream(self) -> None:
        """Receive the stream; while paused, once the producers are parked and a receive found nothing, park too."""
        layer, counts = self.layer, self.tally.counts
        while not self._stopping:
            try:
                message = await asyncio.wait_for(layer.receive("stream"), RECEIVE_WAIT)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                if not self._running.is_set() and self._producers_parked():
                    self._receiver_parked = True
                    try:
                        await self._running.wait()
                    finally:
                        self._receiver_parked = False
                continue
            except EXPECTED_ERRORS as error:
                self.tally.error("stream receive", error)
                continue
            counts["stream received"] += 1
            if message["n"] <= self._last_stream:
                counts["stream out of order or twice"] += 1
            self._last_stream = max(self._last_stream, message["n"])

    # Groups and process channels ------------------------------------------------------------------------------------

    async def _supervise_consumers(self) -> None:
        lifetimes = itertools.cycle(LIFETIMES)
        rooms = itertools.cycle(itertools.combinations(ROOMS, 2))
        while await self._go_on():
            while len(self._consumers) < CONSUMERS and self._running.is_set():
                started = asyncio.create_task(self._consumer(next(rooms), next(lifetimes)))
                key = f"consumer{self.tally.counts['consumers started']}"
                self.tally.counts["consumers started"] += 1
                self._consumers[key] = started
                started.add_done_callback(functools.partial(self._gone, key))
            if self._consumers:
                await asyncio.wait(
                    set(self._consumers.values()), timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await self._running.wait()

    def _gone(self, key: str, task: asyncio.Task[None]) -> None:
        self._consumers.pop(key, None)

    async def _consumer(self, rooms: tuple[str, ...], lifetime: float) -> None:
        """A websocket's consumer: a new channel, two rooms, a message to itself, receiving until it goes."""
        layer, counts = self.layer, self.tally.counts
        joined: list[str] = []
        try:
            channel = await layer.new_channel()
        except EXPECTED_ERRORS as error:
            self.tally.error("new_channel", error)
            return
        except Exception as error:
            self.tally.crash("new_channel", error)
            return
        try:
            for room in rooms:
                joined.append(room)  # before the call: one whose reply was lost may have joined
                await layer.group_add(room, channel)
            await layer.send(channel, {"type": "hello"})
            self._members.append(channel)
            ends = asyncio.get_running_loop().time() + lifetime
            while self._running.is_set() and asyncio.get_running_loop().time() < ends:
                try:
                    await asyncio.wait_for(layer.receive(channel), RECEIVE_WAIT)
                except asyncio.TimeoutError:
                    continue
                counts["consumer messages received"] += 1
        except EXPECTED_ERRORS as error:
            self.tally.error("consumer", error)
        except Exception as error:
            self.tally.crash("consumer", error)
        finally:
            if channel in self._members:
                self._members.remove(channel)
            await self._leave(joined, channel)

    async def _leave(self, rooms: list[str], channel: str) -> None:
        """Leave every room tried, through faults: a membership left behind would be the test's, not the layer's."""
        loop = asyncio.get_running_loop()
        gives_up = loop.time() + LEAVE_TIMEOUT
        for room in rooms:
            while True:
                try:
                    await self.layer.group_discard(room, channel)
                    break
                except EXPECTED_ERRORS as error:
                    self.tally.error("group_discard", error)
                    if loop.time() > gives_up:
                        self.tally.counts["memberships not discarded"] += 1
                        break
                except Exception as error:
                    self.tally.crash("group_discard", error)
                    break

    async def _groups(self) -> None:
        """Group messages to the rooms, in bulk now and then, and direct messages to live consumers."""
        layer, counts = self.layer, self.tally.counts
        for step in itertools.count():
            if not await self._go_on():
                return
            try:
                if step % BULK_EVERY == 0:
                    result = await layer.group_send_many(
                        [(room, {"type": "room", "n": step}) for room in ROOMS]
                    )
                    counts["group messages sent"] += result.sent
                else:
                    await layer.group_send(ROOMS[step % len(ROOMS)], {"type": "room", "n": step})
                    counts["group messages sent"] += 1
                if self._members:
                    await layer.send(self._members[step % len(self._members)], {"type": "direct", "n": step})
                    counts["direct messages sent"] += 1
            except EXPECTED_ERRORS as error:
                self.tally.error("group or direct send", error)
            await asyncio.sleep(GROUP_STEP)  # pacing, see GROUP_STEP

    # Calls from a plain thread ------------------------------------------------------------------------------------

    def _sync_calls(self) -> None:
        """A Django view's or a Celery task's calls: ``layer.sync`` on the layer's own loop, and ``async_to_sync``
        on a new event loop per call."""
        layer, tally = self.layer, self.sync_tally
        counts = tally.counts
        drained = True
        try:
            for step in itertools.count():
                if self._sync_stop.is_set():
                    return
                if not self._sync_running.is_set():
                    if not drained:
                        self._drain_sync_channel(counts)
                        drained = True
                    self._sync_idle.set()
                    self._sync_running.wait(0.2)
                    continue
                self._sync_idle.clear()
                drained = False
                try:
                    layer.sync.send("sync", {"type": "sync", "n": step})
                    counts["sync sent"] += 1
                    layer.sync.receive("sync", timeout=2.0)
                    counts["sync received"] += 1
                except EXPECTED_ERRORS as error:
                    tally.error("layer.sync", error)
                try:
                    async_to_sync(layer.group_send)(ROOMS[step % len(ROOMS)], {"type": "room", "n": -step})
                    counts["async_to_sync group_send"] += 1
                except EXPECTED_ERRORS as error:
                    tally.error("async_to_sync group_send", error)
                self._sync_stop.wait(SYNC_STEP)  # pacing, see SYNC_STEP
        except Exception as error:
            tally.crash("sync calls", error)
        finally:
            self._sync_idle.set()

    def _drain_sync_channel(self, counts: Counter[str]) -> None:
        """Take what a timed-out receive left in the sync channel, so that the layer can come to rest."""
        while True:
            try:
                self.layer.sync.receive("sync", timeout=0.5)
            except EXPECTED_ERRORS:
                return
            counts["sync received"] += 1
