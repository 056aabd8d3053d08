"""One watcher per Sentinel service for the whole process, and the primary's address it keeps for every loop.

Each event loop that uses a Sentinel-managed shard needs two things from the Sentinels: the primary's address when
it connects, and word of a failover while its connections are open. Getting both on every loop costs a Sentinel
query and a Sentinel subscription per loop, and ``async_to_sync`` makes a loop per call: each call from a Django
view or a Celery task used to open three Sentinel connections and one to the primary.

A :class:`PrimaryFollower` does both once for the process. Its :class:`~channels_valkey.sentinel.watcher.
SwitchWatcher` runs on a thread of its own (:class:`~channels_valkey.sentinel.loop_thread.LoopThread`) and keeps the
primary it last heard of; each loop's shard registers with it and is told of a failover on its own loop. A loop
that connects while the watcher is subscribed takes that address without asking anyone: the subscription is what
makes it current, since a switch announced on it reaches the follower before any loop could learn it otherwise.
While the watcher is not subscribed (starting, or moving to another Sentinel), loops ask the Sentinels as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from channels_valkey.sentinel.counters import ShardCounts
from channels_valkey.sentinel.loop_thread import LoopThread
from channels_valkey.sentinel.policy import ResiliencePolicy
from channels_valkey.sentinel.specs import SentinelHost
from channels_valkey.sentinel.watcher import Address, SwitchWatcher

__all__ = ["FollowingShard", "PrimaryFollower", "PrimaryFollowers"]

logger = logging.getLogger("channels_valkey.sentinel")


class FollowingShard(Protocol):
    """What a follower needs of a loop's shard: a way to drop its connections to a primary that is moving."""

    def describe(self) -> str: ...

    def primary_moving(self) -> None:
        """Called on the shard's own loop: drop every connection, so the next command connects afresh."""


class PrimaryFollower:
    """The primary of one Sentinel service as this process knows it, and the shards of every loop that use it.

    ``forget_others(address)`` is called when the primary moves to ``address``: sockets kept for other addresses
    between loops (parking.py) must not be reused.
    """

    def __init__(
        self,
        spec: SentinelHost,
        policy: ResiliencePolicy,
        counts: ShardCounts,
        thread: LoopThread,
        forget_others: Callable[[Address], None],
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.counts = counts
        self._thread = thread
        self._forget_others = forget_others
        self._lock = threading.Lock()
        self._shards: weakref.WeakKeyDictionary[FollowingShard, asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary()
        )
        self._watcher: SwitchWatcher | None = None
        self._pid = 0
        #: The replica being promoted, and until when to prefer it over what the Sentinels answer.
        self._pin: tuple[Address, float] | None = None

    def describe(self) -> str:
        return self.spec.describe()

    # What loops ask -------------------------------------------------------------------------------------------

    def address(self) -> Address | None:
        """Where to connect now without asking the Sentinels: the replica being promoted, else the primary the
        subscribed watcher knows; None while the watcher is not subscribed (ask the Sentinels then)."""
        pin = self._pin
        if pin is not None and time.monotonic() < pin[1]:
            return pin[0]
        watcher = self._watcher
        if watcher is None or self._pid != os.getpid() or not watcher.listening.is_set():
            return None
        return watcher.known_primary

    def is_current(self, address: Address) -> bool:
        """Whether connections to ``address`` may be kept between loops: it is the primary the watcher knows."""
        return self.address() == address

    def follow(self, shard: FollowingShard) -> None:
        """Tell ``shard`` (of the running loop) of failovers from now on, starting the watcher if it is not running
        in this process."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._shards[shard] = loop
            if self._watcher is not None and self._pid == os.getpid():
                return
            # First use, or the first in a child process: the parent's watcher thread did not come along.
            self._pid = os.getpid()
            self._watcher = SwitchWatcher(self.spec, self.policy, self._on_promoting, self._on_switch)
            watcher = self._watcher
        self._thread.submit(_start(watcher))

    def unfollow(self, shard: FollowingShard) -> None:
        with self._lock:
            self._shards.pop(shard, None)

    async def stop(self) -> None:
        """Stop the watcher (on the follower's thread); the next :meth:`follow` starts it again."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None and self._pid == os.getpid():
            await watcher.stop()

    # What the watcher reports, on the follower's thread --------------------------------------------------------

    async def _on_promoting(self, address: Address) -> None:
        logger.warning(
            "%s: Sentinels are promoting %s:%s; moving connections there", self.describe(), *address
        )
        self._pin = (address, time.monotonic() + self.policy.retry_deadline)
        self._tell_shards()

    async def _on_switch(self, address: Address) -> None:
        pin, self._pin = self._pin, None
        self.counts.switched_to(address)
        self._forget_others(address)
        if pin is not None and pin[0] == address:
            return  # the connections moved there when the promotion began
        logger.warning("%s: Sentinels switched the primary to %s:%s; reconnecting", self.describe(), *address)
        self._tell_shards()

    def _tell_shards(self) -> None:
        with self._lock:
            shards = list(self._shards.items())
        for shard, loop in shards:
            try:
                loop.call_soon_threadsafe(shard.primary_moving)
            except RuntimeError:  # its loop is closed: the shard is gone with it
                self.unfollow(shard)


async def _start(watcher: SwitchWatcher) -> None:
    watcher.start()


class PrimaryFollowers:
    """The followers of one connection manager, by shard index, sharing one thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followers: dict[int, PrimaryFollower] = {}
        self._thread = LoopThread("channels-valkey sentinel follower")

    def get(
        self,
        index: int,
        spec: SentinelHost,
        policy: ResiliencePolicy,
        counts: ShardCounts,
        forget_others: Callable[[Address], None],
    ) -> PrimaryFollower:
        """The follower of shard ``index``, made on first use."""
        with self._lock:
            found = self._followers.get(index)
            if found is None:
                found = self._followers[index] = PrimaryFollower(
                    spec, policy, counts, self._thread, forget_others
                )
            return found

    def stop(self) -> None:
        """Stop every watcher and the thread (from any thread but the follower's); they start again when needed."""
        with self._lock:
            followers = list(self._followers.values())
        self._thread.stop(_stop_all(followers))


async def _stop_all(followers: list[PrimaryFollower]) -> None:
    for follower in followers:
        await follower.stop()
