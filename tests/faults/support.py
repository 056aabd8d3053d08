"""What the fault tests (issue #18) share: both layers by name, the two sizes of each test, the server's own measure
of how long each command held it, and one line of figures per test (imported as ``faults.support``).

A fault test whose size matters runs twice from one body (:func:`sizes`): a CI-sized variant marked ``quick`` that
plain ``hatch test`` selects, and the issue's full size marked ``chaos``, which ``hatch test`` leaves out (the root
pytest settings pass ``-m "not chaos and not soak"``) and ``hatch run chaos`` selects (``-m "not quick and not
soak"`` on tests/faults). The soak's CI-sized run, five minutes, is marked ``soak`` instead of ``quick``: too long for
``hatch test``, it runs on its own (``hatch run chaos:soak``).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import valkey

from servers.process import ValkeyProcess

CORE = "channels_valkey.core.ValkeyChannelLayer"
PUBSUB = "channels_valkey.pubsub.ValkeyPubSubChannelLayer"

#: Both layers, by import path, as a test parameter (ids ``core`` and ``pubsub``).
BACKENDS = pytest.mark.parametrize("backend", [CORE, PUBSUB], ids=["core", "pubsub"])


def make_layer(backend: str, hosts: list[Any], prefix: str, **config: Any) -> Any:
    """A layer of ``backend`` (an import path) on ``hosts``, with a capacity no test stream reaches by default."""
    module, _, name = backend.rpartition(".")
    config.setdefault("capacity", 1_000_000)
    return getattr(importlib.import_module(module), name)(hosts=hosts, prefix=prefix, **config)


def sizes(ci: int, chaos: int, ci_mark: pytest.MarkDecorator = pytest.mark.quick) -> pytest.MarkDecorator:
    """Parametrize ``size`` with the CI-sized run (id ``ci``, marked ``quick``) and the issue's full size (id
    ``chaos``, marked ``chaos``). A fault test without sizes runs in both.

    ``ci_mark=pytest.mark.soak`` marks the CI-sized run ``soak`` instead: a run too long for ``hatch test``, which
    leaves it out, run by ``hatch run chaos:soak`` (and CI) on its own."""
    return pytest.mark.parametrize(
        "size",
        [
            pytest.param(ci, id="ci", marks=ci_mark),
            pytest.param(chaos, id="chaos", marks=pytest.mark.chaos),
        ],
    )


async def settles(condition: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds, polled on the event loop: the test reports its figures
    either way, then asserts."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


class Received(Protocol):
    """Where :func:`receive_until` files what it received and the errors it met."""

    received: list[int]
    receive_errors: list[str]


async def receive_until(layer: Any, done: asyncio.Event, stream: Received) -> None:
    """Receive the numbered messages of the channel ``stream`` until ``done``; errors are filed, not raised."""
    while not done.is_set():
        try:
            message = await asyncio.wait_for(layer.receive("stream"), 1.0)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            continue
        except (valkey.ConnectionError, valkey.TimeoutError) as error:
            stream.receive_errors.append(f"{type(error).__name__}: {error}")
            continue
        stream.received.append(message["n"])


def report(fault: str, **figures: Any) -> None:
    """Print the figures of one fault test on one line (run with ``-s`` to see them)."""
    shown = ", ".join(f"{name.replace('_', ' ')} {_shown(value)}" for name, value in figures.items())
    print(f"\n[fault] {fault}: {shown}")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


#: Commands that held the server at least this long are recorded (SLOWLOG and the latency monitor's threshold).
HELD_THRESHOLD_MS = 1


@dataclass
class ServerTime:
    """How a block of work held the server: its longest commands (at least :data:`HELD_THRESHOLD_MS`), from the
    SLOWLOG in microseconds and from the latency monitor in milliseconds, and how many times each command ran."""

    slow: list[dict[str, Any]] = field(default_factory=list)
    #: The latency monitor's longest ``command`` / ``fast-command`` event, in milliseconds (0: none recorded).
    monitor_ms: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def longest_us(self) -> int:
        return max((int(entry["duration"]) for entry in self.slow), default=0)

    def longest(self) -> str:
        """The longest command: its name and time, for a failure message."""
        if not self.slow:
            return f"no command of {HELD_THRESHOLD_MS} ms or more"
        entry = max(self.slow, key=lambda entry: int(entry["duration"]))
        return f"{_name(entry['command'])} for {int(entry['duration']) / 1000:.2f} ms"


def _name(command: Any) -> str:
    text = command if isinstance(command, str) else bytes(command).decode(errors="replace")
    return text.split(maxsplit=1)[0].upper()


def _calls(server: ValkeyProcess) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_").upper(): int(stats["calls"])
        for name, stats in server.info("commandstats").items()
    }


@contextmanager
def server_time(server: ValkeyProcess) -> Iterator[ServerTime]:
    """Measure how the work inside the block holds the server: every command of 1 ms or more is recorded by the
    SLOWLOG and the latency monitor (a threshold of 0 would log each command a script runs too, and slow it down).
    Only for a test's private server: the settings are the server's, and so are the counts."""
    measured = ServerTime()
    threshold_us = HELD_THRESHOLD_MS * 1000
    with server.client() as client:
        client.config_set("slowlog-max-len", 10_000)
        client.config_set("slowlog-log-slower-than", threshold_us)
        client.config_set("latency-monitor-threshold", HELD_THRESHOLD_MS)
        client.slowlog_reset()
        client.execute_command("LATENCY", "RESET")
    before = _calls(server)
    try:
        yield measured
    finally:
        after = _calls(server)
        with server.client() as client:
            measured.slow = [
                e for e in client.slowlog_get(10_000) if _name(e["command"]) not in ("CONFIG", "INFO")
            ]
            latest = client.execute_command("LATENCY", "LATEST")
            client.config_set("latency-monitor-threshold", 0)
        measured.monitor_ms = max(
            (int(event[3]) for event in latest if _name(event[0]) in ("COMMAND", "FAST-COMMAND")), default=0
        )
        measured.calls = {name: count - before.get(name, 0) for name, count in after.items()}
        measured.calls = {name: count for name, count in measured.calls.items() if count}
