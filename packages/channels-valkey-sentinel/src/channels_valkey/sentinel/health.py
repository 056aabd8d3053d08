"""Health of a layer's servers: is every primary reachable, answering as a primary, and how fast.

A readiness probe wants one answer within a deadline, whatever state the servers are in, so :func:`check_health`
never raises for a server that is down, refuses a command or does not answer: each becomes a
:class:`ServerHealth` with its error. Every primary is asked at once (each Sentinel-followed primary, each primary of
a cluster), with ``PING`` and ``ROLE`` on its command lane, one attempt each (no retries: a probe that waits out a
failover's retries would report it only after the fact), and whatever has not answered when ``timeout`` is up is
reported as timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.redaction import redact_url

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionManager
    from channels_valkey.sentinel.shard import Shard

__all__ = ["HealthReport", "ServerHealth", "check_health"]


@dataclass(frozen=True)
class ServerHealth:
    """One server as the probe found it."""

    #: The shard and its host entry (passwords masked), with the node's address on a cluster.
    address: str
    #: Whether it answered ``PING`` (a refusal by the ACL is an answer).
    reachable: bool
    #: Its ``ROLE`` (``"master"``, ``"slave"``, ...), None when it did not say (unreachable, or ``ROLE`` refused).
    role: str | None
    #: Seconds of the ``PING`` round trip, None when it did not answer.
    round_trip: float | None
    #: Why it is not healthy (masked like ``address``), None when it is.
    error: str | None

    @property
    def ok(self) -> bool:
        """Reachable, and a primary (or silent about its role, where the ACL refuses ``ROLE``)."""
        return self.reachable and self.error is None and self.role in (None, "master")


@dataclass(frozen=True)
class HealthReport:
    """Every server of a layer: ``ok`` when all of them are."""

    ok: bool
    servers: tuple[ServerHealth, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (for a health endpoint or a log line)."""
        return {"ok": self.ok, "servers": [{**asdict(server), "ok": server.ok} for server in self.servers]}


async def check_health(connections: ConnectionManager, *, timeout: float = 1.0) -> HealthReport:
    """Ask every primary behind ``connections`` whether it is up, within ``timeout`` seconds in all."""
    if timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    deadline = asyncio.get_running_loop().time() + timeout
    found = asyncio.ensure_future(_servers(connections))
    servers = await _within(found, deadline)
    if servers is None:
        return HealthReport(False, (_failed("the layer's shards", "no answer within the timeout", timeout),))
    probes = [
        (name, None if server is None else asyncio.ensure_future(_probe(name, server)), error)
        for name, server, error in servers
    ]
    results: list[ServerHealth] = []
    for name, probe, error in probes:
        if probe is None:  # its primaries could not even be found
            results.append(ServerHealth(name, False, None, None, error))
            continue
        result = await _within(probe, deadline)
        results.append(
            result if result is not None else _failed(name, "no answer within the timeout", timeout)
        )
    return HealthReport(all(server.ok for server in results), tuple(results))


async def _servers(connections: ConnectionManager) -> list[tuple[str, Shard | None, str | None]]:
    """Each primary to probe, by name; a shard whose primaries cannot be found is listed with the error."""
    found: list[tuple[str, Shard | None, str | None]] = []
    try:
        shards = await connections.shards()
    except Exception as error:  # Sentinel discovery failed: there is no shard to name yet
        return [("the layer's shards", None, _describe_error(error))]
    for shard in shards:
        try:
            primaries = await shard.primaries()
        except Exception as error:
            found.append((shard.describe(), None, _describe_error(error)))
            continue
        cluster = shard.single_server() is None
        for server in primaries:
            name = f"{shard.describe()} node {server.spec.describe()}" if cluster else server.describe()
            found.append((name, server, None))
    return found


async def _probe(name: str, server: Shard) -> ServerHealth:
    started = time.perf_counter()
    try:
        await server.execute_command("PING")
    except valkey_errors.ResponseError:
        pass  # an ACL refusing PING: the server answered all the same
    except Exception as error:
        return ServerHealth(name, False, None, None, _describe_error(error))
    round_trip = time.perf_counter() - started
    try:
        reply = await server.execute_command("ROLE")
    except Exception:  # an ACL without ROLE: reachable, role unknown
        return ServerHealth(name, True, None, round_trip, None)
    role = _text(reply[0]) if isinstance(reply, list | tuple) and reply else None
    wrong_role = None if role in (None, "master") else f"answers as {role}, not as a primary"
    return ServerHealth(name, True, role, round_trip, wrong_role)


async def _within(work: asyncio.Future[Any], deadline: float) -> Any:
    """``work``'s result, or None when the deadline passes first (then it is cancelled and left to end)."""
    remaining = deadline - asyncio.get_running_loop().time()
    done, _ = await asyncio.wait({work}, timeout=max(remaining, 0))
    if work in done:
        return work.result()
    work.cancel()
    work.add_done_callback(_collect)
    return None


def _collect(work: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        work.exception()


def _failed(name: str, why: str, timeout: float) -> ServerHealth:
    return ServerHealth(name, False, None, None, f"{why} ({timeout:g} s)")


def _describe_error(error: BaseException) -> str:
    return redact_url(f"{type(error).__name__}: {error}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
