"""A shard's server figures from ``INFO``: memory in use, connected clients, commands per second.

They say how loaded a server is, beside what the layer keeps on it: ``top`` shows them per shard at every refresh.
A failure is kept as the figures' ``problem``, never raised, so one server down does not end the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from valkey import exceptions as valkey_errors

from channels_valkey.cli.shards import ShardSlot

#: The ``INFO`` sections that hold the figures (several sections in one call: Valkey 7 and newer).
SECTIONS = ("memory", "clients", "stats")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass(frozen=True)
class ServerFigures:
    """What one server said about its load, or why it said nothing."""

    memory_bytes: int | None = None
    clients: int | None = None
    ops_per_sec: int | None = None
    problem: str | None = None
    #: True when the server could not be reached at all, so asking it anything else now would fail the same way.
    unreachable: bool = False

    def as_json(self) -> dict[str, Any]:
        """The figures under the names ``top --json`` documents."""
        return {"memory_bytes": self.memory_bytes, "clients": self.clients, "ops_per_sec": self.ops_per_sec}


async def server_figures(slot: ShardSlot) -> ServerFigures:
    """The figures of the shard's server (its primary, for a Sentinel or cluster shard)."""
    if slot.problem is not None:
        return ServerFigures(problem=slot.problem, unreachable=True)
    try:
        client = await slot.client()
        info = await client.execute_command("INFO", *SECTIONS)
    except valkey_errors.NoPermissionError as error:
        return ServerFigures(problem=f"the ACL refuses INFO: {error}")
    except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as error:
        return ServerFigures(problem=f"unreachable: {type(error).__name__}: {error}", unreachable=True)
    except valkey_errors.ValkeyError as error:
        return ServerFigures(problem=f"INFO failed: {type(error).__name__}: {error}")
    return ServerFigures(
        memory_bytes=_whole(info.get("used_memory")),
        clients=_whole(info.get("connected_clients")),
        ops_per_sec=_whole(info.get("instantaneous_ops_per_sec")),
    )


def _whole(value: object) -> int | None:
    """An INFO field as a number; None where the server left it out or wrote something else."""
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def bytes_text(size: int | None) -> str | None:
    """A memory size for a table cell, in binary units (``1.5 MiB``); None when unknown."""
    if size is None:
        return None
    value = float(size)
    for unit in _UNITS[:-1]:
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"
