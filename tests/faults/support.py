"""What the fault tests (issue #18) share: both layers by name, the two sizes of each test, the server's own measure
of how long each command held it, and one line of figures per test (imported as ``faults.support``).

Each fault test runs twice from one body: a CI-sized variant that plain ``hatch test`` selects, and the issue's full
size behind the ``chaos`` marker, which ``hatch run chaos`` selects (``-m chaos``) and ``hatch test`` leaves out (the
root pytest settings pass ``-m "not chaos"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

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


def sizes(ci: int, chaos: int) -> pytest.MarkDecorator:
    """Parametrize ``size`` with the CI-sized run (id ``ci``) and the issue's full size (id ``chaos``, marked)."""
    return pytest.mark.parametrize(
        "size", [pytest.param(ci, id="ci"), pytest.param(chaos, id="chaos", marks=pytest.mark.chaos)]
    )


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


@dataclass
class SlowCommands:
    """What the server's SLOWLOG recorded: every command with its time on the server, in microseconds."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def longest_us(self) -> int:
        return max((int(entry["duration"]) for entry in self.entries), default=0)

    def longest(self) -> str:
        """The longest command: its name and time, for a failure message."""
        if not self.entries:
            return "no command recorded"
        entry = max(self.entries, key=lambda entry: int(entry["duration"]))
        command = entry["command"]
        name = command.split()[0] if isinstance(command, str) else bytes(command).split()[0].decode()
        return f"{name} for {int(entry['duration']) / 1000:.2f} ms"

    def count(self, name: str) -> int:
        """How many recorded commands were ``name`` (``EVALSHA``, ``PUBLISH``...)."""
        found = 0
        for entry in self.entries:
            command = entry["command"]
            text = command if isinstance(command, str) else bytes(command).decode(errors="replace")
            if text.split(maxsplit=1)[0].upper() == name.upper():
                found += 1
        return found


@contextmanager
def every_command_timed(server: ValkeyProcess, capacity: int = 100_000) -> Iterator[SlowCommands]:
    """Record every command the server runs inside the block, with how long it held the server (SLOWLOG with a
    threshold of 0 us). Only for a test's private server: the setting is the server's, not the connection's."""
    recorded = SlowCommands()
    with server.client() as client:
        client.config_set("slowlog-max-len", capacity)
        client.config_set("slowlog-log-slower-than", 0)
        client.slowlog_reset()
    try:
        yield recorded
    finally:
        with server.client() as client:
            client.config_set("slowlog-log-slower-than", -1)
            entries = client.slowlog_get(capacity)
            client.config_set("slowlog-log-slower-than", 10_000)
        # The last entries are this client's own CONFIG SET; SLOWLOG RESET is never recorded.
        recorded.entries = [entry for entry in entries if not _own(entry["command"])]


def _own(command: Any) -> bool:
    text = command if isinstance(command, str) else bytes(command).decode(errors="replace")
    return text.upper().startswith(("CONFIG ", "SLOWLOG "))
