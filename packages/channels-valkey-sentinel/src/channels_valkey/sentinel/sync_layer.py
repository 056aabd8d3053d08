"""``layer.sync``: a channel layer's methods for code that is not async at all.

A Django view, a signal handler, a management command or a Celery task can call ``layer.sync.group_send(group,
message)`` where it would write ``async_to_sync(layer.group_send)(group, message)``. Both work; this one runs on the
layer's own long-lived event loop (:class:`~channels_valkey.sentinel.LoopThread`) instead of a new loop per call, so
it costs a thread hop instead of a loop, and its connections, Sentinel watcher and cluster slot map live as long as
the layer. Many threads may call at once: their commands pipeline on each shard's connection.

Every call is the layer's coroutine method, run there: the same checks (bad input raises before anything is
written, naming the value), capacity (``ChannelFull``), encryption and at-most-once sends (``ReplyLost``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from channels_valkey.sentinel.bulk import GroupSendManyResult, SendManyResult
from channels_valkey.sentinel.health import HealthReport
from channels_valkey.sentinel.loop_thread import LoopThread

__all__ = ["SyncLayer", "SyncLayerAccess"]


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
        self._thread = LoopThread(f"channels-valkey sync calls ({type(layer).__name__})")

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
