"""``layer.sync``: a channel layer's methods for code that is not async at all.

A Django view, a signal handler, a management command or a Celery task can call ``layer.sync.group_send(group,
message)`` where it would write ``async_to_sync(layer.group_send)(group, message)``. Both work; this one runs on the
layer's own long-lived event loop (:class:`~channels_valkey.sentinel.LoopThread`) instead of a new loop per call, so
it costs a thread hop instead of a loop, and its connections, Sentinel watcher and cluster slot map live as long as
the layer. Many threads may call at once: their commands pipeline on each shard's connection.

Every call is the layer's coroutine method, run there: the same checks (bad input raises before anything is
written, naming the value), capacity (``ChannelFull``), encryption and at-most-once sends (``ReplyLost``).

The same loop serves ``async_to_sync(layer.send)(...)`` and the other sends from code with no loop: asgiref runs
each such call on a loop of its own, and the layers hand the send from there to this loop (:meth:`SyncLayer.
hand_off`, :mod:`~channels_valkey.sentinel.call_loops`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from channels_valkey.sentinel.bulk import GroupSendManyResult, SendManyResult
from channels_valkey.sentinel.call_loops import hands_off, on_call_loop
from channels_valkey.sentinel.health import HealthReport
from channels_valkey.sentinel.loop_thread import LoopThread

__all__ = ["SyncLayer", "SyncLayerAccess"]

T = TypeVar("T")


class AsyncLayer(Protocol):
    """The coroutine methods of a layer that :class:`SyncLayer` offers."""

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    async def receive(self, channel: str) -> dict[str, Any]: ...

    async def new_channel(self, prefix: str = ...) -> str: ...

    async def group_add(self, group: str, channel: str) -> None: ...

    async def group_discard(self, group: str, channel: str) -> None: ...

    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...

    async def send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> SendManyResult: ...

    async def group_send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> GroupSendManyResult: ...

    async def flush(self) -> None: ...

    async def close_pools(self) -> None: ...

    async def health(self, timeout: float = ...) -> HealthReport: ...


class SyncLayer:
    """The synchronous face of one layer instance (``layer.sync``); safe to call from any number of threads.

    A call from a thread whose event loop is running raises RuntimeError before doing anything: it would block
    that loop (``await`` the layer's method there).
    """

    def __init__(self, layer: AsyncLayer) -> None:
        self._layer = layer
        self._thread = LoopThread(f"channels-valkey sync calls ({type(layer).__name__} at {id(layer):#x})")
        # A layer dropped without close() takes its loop's thread and connections with it: the finalizer holds the
        # thread and the layer's connection manager, never the layer. (Sends of async_to_sync start the thread
        # without the caller asking for it; code that makes a layer per task must not leave a thread per task.)
        connections = getattr(layer, "_connections", None)
        close = getattr(connections, "close", None)
        finalizer = weakref.finalize(layer, _stop_when_gone, self._thread, close)
        finalizer.atexit = False  # a daemon thread ends with the process

    @property
    def thread_name(self) -> str:
        """The name of the thread its loop runs in, as thread dumps show it (the layer's class and address)."""
        return self._thread.name

    def send(self, channel: str, message: dict[str, Any]) -> None:
        """``await layer.send(channel, message)``: raises ``ChannelFull`` when the channel is at capacity."""
        self._thread.run(self._layer.send(channel, message))

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        """``await layer.group_send(group, message)``."""
        self._thread.run(self._layer.group_send(group, message))

    def group_add(self, group: str, channel: str) -> None:
        """``await layer.group_add(group, channel)``."""
        self._thread.run(self._layer.group_add(group, channel))

    def group_discard(self, group: str, channel: str) -> None:
        """``await layer.group_discard(group, channel)``."""
        self._thread.run(self._layer.group_discard(group, channel))

    def send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> SendManyResult:
        """``await layer.send_many(pairs)``: pipelined per shard; the result names the channels that were full."""
        return self._thread.run(self._layer.send_many(pairs))

    def group_send_many(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> GroupSendManyResult:
        """``await layer.group_send_many(pairs)``: pipelined per shard; the result names the full members."""
        return self._thread.run(self._layer.group_send_many(pairs))

    def receive(self, channel: str, timeout: float | None = None) -> dict[str, Any]:
        """The next message of ``channel``, waiting at most ``timeout`` seconds (``TimeoutError`` then).

        The timeout runs on the layer's loop, where the receive's cancellation keeps what it was handed: a
        message that arrives as the time runs out is returned or left for the next receive, never lost.
        """
        if timeout is None:
            return self._thread.run(self._layer.receive(channel))
        try:
            return self._thread.run(asyncio.wait_for(self._layer.receive(channel), timeout))
        except asyncio.TimeoutError as error:  # a class of its own before Python 3.11, the builtin since
            raise TimeoutError(f"no message on {channel!r} within {timeout:g} s") from error

    def new_channel(self, prefix: str = "specific") -> str:
        """``await layer.new_channel(prefix)``."""
        return self._thread.run(self._layer.new_channel(prefix))

    def flush(self) -> None:
        """``await layer.flush()``."""
        self._thread.run(self._layer.flush())

    def health(self, timeout: float = 1.0) -> HealthReport:
        """``await layer.health(timeout)``."""
        return self._thread.run(self._layer.health(timeout))

    def close(self) -> None:
        """Close the connections of the sync calls' loop and stop its thread; the next call starts them again."""
        self._thread.stop(self._layer.close_pools())

    async def hand_off(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` (one of the layer's methods) on this loop and await its result from the running loop.

        For a send made on a loop that ``async_to_sync`` made for one call: this loop's connections are open
        already. Cancelling the await cancels the coroutine there; the caller's context variables go with it.
        """
        return await asyncio.wrap_future(self._thread.submit(coroutine))

    async def close_handed_off(self) -> None:
        """Close the connections of this loop, if its thread runs, from another loop (the loop stays)."""
        loop = self._thread.loop()
        if loop is not None and loop is not asyncio.get_running_loop():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._layer.close_pools(), loop))


class SyncLayerAccess:
    """Gives a layer class its ``sync`` attribute: one :class:`SyncLayer` per instance, made at first use."""

    _sync_lock = threading.Lock()

    @property
    def sync(self) -> SyncLayer:
        """This layer's methods for code that is not async (see :mod:`channels_valkey.sentinel.sync_layer`)."""
        found: SyncLayer | None = self.__dict__.get("_sync_layer")
        if found is None:
            with SyncLayerAccess._sync_lock:
                found = self.__dict__.get("_sync_layer")
                if found is None:
                    found = self.__dict__["_sync_layer"] = SyncLayer(self)  # type: ignore[arg-type]
        return found

    def _hand_off_to(self) -> SyncLayer | None:
        """``self.sync`` when a send made now goes to the layer's own loop (:func:`~channels_valkey.sentinel.
        call_loops.hands_off`: the running loop is one ``async_to_sync`` made for one call), else None."""
        return self.sync if hands_off() else None

    async def _close_handed_off(self) -> None:
        """From a loop ``async_to_sync`` made for one call, close the connections its sends were handed to too."""
        found: SyncLayer | None = self.__dict__.get("_sync_layer")
        if found is not None and on_call_loop():
            await found.close_handed_off()


def _stop_when_gone(thread: LoopThread, close: Callable[[], Coroutine[Any, Any, object]] | None) -> None:
    """A layer was collected: close its connections on its sync loop, then end that loop's thread (not waited for:
    the garbage collector may run this on any thread, an event loop's too)."""
    thread.stop_soon(close() if close is not None else None)
