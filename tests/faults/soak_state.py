"""What the soak compares at rest: each layer's own tables, read from its internals, the keys of the layers' prefixes
and the subscriptions on the server, and what Python holds; and how the soak brings the layers to rest (imported as
``faults.soak_state``).

A table that keeps one entry per channel, group, waiting receive or event loop ever seen grows slowly enough to hide
in tracemalloc's total for a while, and a stray key costs the client nothing at all: both are counted directly.
The internals read here are the layers' private attributes; a rename there fails this module loudly (AttributeError),
never silently.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from faults.soak_memory import snapshot_at_rest
from faults.soak_traffic import Traffic
from faults.support import settles
from servers.process import ValkeyProcess


def tables(layer: Any) -> dict[str, int]:
    """The sizes of what ``layer`` keeps per channel, group, receive and event loop, and the messages it holds."""
    held = layer.stats()["held"]
    common = {
        "event loops with connections": len(layer._connections._loops),
        "messages held": held["normal"] + held["process"],
    }
    if isinstance(layer, ValkeyChannelLayer):
        inbox = layer._inbox
        receivers = list(layer._receivers.values())
        return {
            **common,
            "event loops receiving": len(receivers),
            "queue readers": sum(len(receiver._readers) for receiver in receivers),
            "process channels buffered": len(inbox._messages),
            "receives waiting": len(inbox._waiters) + len(inbox._waiting),
            "process queues claimed": len(inbox._readers),
        }
    if isinstance(layer, ValkeyPubSubChannelLayer):
        states = list(layer._states.values())
        return {
            **common,
            "event loops receiving": len(states),
            "local channels": sum(len(state.channels) for state in states),
            "local groups": sum(len(state.groups) for state in states),
            "subscribed names": sum(
                len(subscriber.wanted) for state in states for subscriber in state.subscribers.values()
            ),
        }
    raise TypeError(f"no tables known for {type(layer).__name__}")


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The tables larger ``after`` than ``before``, as ``name: (before, after)``."""
    return {name: (before[name], size) for name, size in after.items() if size > before[name]}


def server_keys(server: ValkeyProcess, prefixes: list[str]) -> dict[str, int]:
    """Every key of ``prefixes`` on ``server`` with its time to live in seconds (-1: none)."""
    with server.client() as client:
        return {
            key.decode(): int(client.ttl(key))
            for prefix in prefixes
            for key in client.scan_iter(match=f"{prefix}*", count=1000)
        }


def subscriptions(server: ValkeyProcess) -> list[str]:
    """The Pub/Sub channels with a subscriber on ``server`` (a test's private one: worker channels subscribe to
    their bare name, outside the prefix)."""
    with server.client() as client:
        return sorted(name.decode() for name in client.pubsub_channels())


def transient(table: dict[str, int]) -> int:
    """What a layer at rest no longer holds: messages, buffers, waiting receives, readers, channels, groups,
    subscriptions (the traffic has stopped, its receivers too)."""
    return sum(table.get(name, 0) for name in TRANSIENT)


#: The tables that are empty at rest (the others count event loops, which stay).
TRANSIENT = (
    "messages held",
    "process channels buffered",
    "receives waiting",
    "process queues claimed",
    "queue readers",
    "local channels",
    "local groups",
    "subscribed names",
)


#: Longest wait at a rest for the threads of collected ``async_to_sync`` calls to end.
CALL_THREADS_TIMEOUT = 5.0


async def threads_at_rest() -> list[str]:
    """The names of the threads running at a rest, the traffic paused.

    An ``async_to_sync`` call that raised (a ``ReplyLost`` at a cut, say) leaves its thread's executor in a reference
    cycle: the call's future holds the error, whose traceback holds the frame that holds the future. The thread ends
    when the collector frees the executor, so the garbage is collected first and those threads (asgiref names them
    ``ThreadPoolExecutor-N_0``; no call runs at a rest) are given time to end; one that does not stays in the list.
    """
    gc.collect()
    await settles(
        lambda: not any(thread.name.startswith("ThreadPoolExecutor-") for thread in threading.enumerate()),
        CALL_THREADS_TIMEOUT,
    )
    return sorted(thread.name for thread in threading.enumerate())


def long_lived(threads: list[str]) -> list[str]:
    """Threads but those of the loop's default executor (``asyncio.to_thread``), a pool that may add a worker
    whenever a call comes as the last one ends, up to its fixed maximum."""
    return [name for name in threads if not name.startswith("asyncio_")]


@dataclass
class Baseline:
    """The server before the traffic: the prefixes' keys and the Pub/Sub subscriptions (none, on a new server)."""

    keys: dict[str, int]
    subscriptions: list[str]
    dbsize: int

    @classmethod
    def of(cls, server: ValkeyProcess, prefixes: list[str]) -> Baseline:
        with server.client() as client:
            dbsize = int(client.dbsize())
        return cls(server_keys(server, prefixes), subscriptions(server), dbsize)


@dataclass
class Rest:
    """One moment of rest: what the layers and the server held, and how long getting there took."""

    #: Whether the layers and the server came back to the baseline within the time allowed.
    settled: bool
    seconds: float
    #: The prefixes' keys (with their time to live) as soon as the traffic had stopped.
    keys_when_stopped: dict[str, int]
    tables: dict[str, dict[str, int]]
    tasks: int
    threads: list[str]
    #: What Python holds (None when tracemalloc is not tracing).
    snapshot: tracemalloc.Snapshot | None
    #: When the rest ended (monotonic).
    at: float = field(default_factory=time.monotonic)


async def come_to_rest(
    traffic: list[Traffic],
    server: ValkeyProcess,
    prefixes: list[str],
    baseline: Baseline,
    *,
    pause_timeout: float,
    rest_timeout: float,
) -> Rest:
    """Stop the traffic and wait until the layers hold nothing transient and the server is back to ``baseline``
    (what the layers drop after ``expiry`` included); the traffic stays paused."""
    started = time.monotonic()
    for each in traffic:
        assert await each.pause(pause_timeout), (
            f"the {each.name} traffic did not stop within {pause_timeout:.0f}s"
        )
    keys_when_stopped = server_keys(server, prefixes)

    def at_rest() -> bool:
        return (
            server_keys(server, prefixes) == baseline.keys
            and subscriptions(server) == baseline.subscriptions
            and all(transient(tables(each.layer)) == 0 for each in traffic)
        )

    settled = await settles(at_rest, rest_timeout, interval=0.2)
    return Rest(
        settled,
        time.monotonic() - started,
        keys_when_stopped,
        {each.name: tables(each.layer) for each in traffic},
        len(asyncio.all_tasks()),
        await threads_at_rest(),
        snapshot_at_rest() if tracemalloc.is_tracing() else None,
    )
