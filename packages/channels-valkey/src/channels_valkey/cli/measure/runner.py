"""Running the cases: both sides of a case on one event loop of its own, in turns, within a time limit.

Each case makes a layer of each side, prepares both, then times their rounds alternately (ours, channels_redis,
channels_redis, ours, ...), so that a machine or server that gets busier during the run weighs on both alike.
Each side writes under a prefix of its own, made for this run, and deletes it after every case, also when the case
failed or was interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

from channels_valkey.cli.measure.cases import Case, Sizes
from channels_valkey.cli.measure.exceptions import BenchError, CaseFailed, Unreachable
from channels_valkey.cli.measure.progress import Progress
from channels_valkey.cli.measure.results import Comparison
from channels_valkey.cli.measure.sides import OURS, PEER, SIDES, discard_layer, make_layer
from channels_valkey.sentinel import ServerHost, decode_hosts

#: Longest one case may take, both sides together, before the run gives up on it.
CASE_TIMEOUT = 120.0
#: Longest the clean-up of one side may take (deleting its keys, closing its connections).
CLEANUP_TIMEOUT = 15.0
#: Seconds to connect to, and to hear from, each server before the run starts.
PROBE_TIMEOUT = 3.0
#: Every key and channel name of a bench run starts with this.
PREFIX_ROOT = "channels-valkey-bench-"


def server_hosts(urls: Sequence[str]) -> list[ServerHost]:
    """The servers of ``--hosts``; :class:`~channels_valkey.sentinel.HostConfigError` names a malformed URL."""
    specs = decode_hosts(list(urls))
    for spec in specs:
        if not isinstance(spec, ServerHost):
            raise BenchError(f"bench measures servers given by URL, not {spec.describe()}")
    return [spec for spec in specs if isinstance(spec, ServerHost)]


def server_version(urls: Sequence[str]) -> str:
    """The version of the first server, after checking that every server answers (:class:`Unreachable` if not)."""
    versions = [asyncio.run(_probe(spec)) for spec in server_hosts(urls)]
    return versions[0]


async def _probe(spec: ServerHost) -> str:
    options = {**spec.options, "socket_connect_timeout": PROBE_TIMEOUT, "socket_timeout": PROBE_TIMEOUT}
    client = avalkey.Valkey(connection_pool=avalkey.ConnectionPool(**options))
    try:
        info = await asyncio.wait_for(client.info("server"), 2 * PROBE_TIMEOUT)
    except (valkey_errors.ValkeyError, OSError, asyncio.TimeoutError) as exc:
        raise Unreachable(f"cannot reach {spec.describe()}: {exc or type(exc).__name__}") from exc
    finally:
        await client.aclose(close_connection_pool=True)
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '(unknown version)')}"


async def _settle(layer: Any) -> None:
    """Wait for the work ``layer`` still does in the background after its rounds, before the other side's turn."""
    wait_received = getattr(layer, "wait_received", None)
    if wait_received is not None:
        await wait_received()


class Bench:
    """One run of cases against ``hosts`` (URLs), both sides on the same servers."""

    def __init__(self, hosts: Sequence[str], sizes: Sizes, progress: Progress | None = None) -> None:
        self.hosts = list(hosts)
        self.sizes = sizes
        self.progress = progress
        token = uuid.uuid4().hex[:8]
        #: The prefix each side writes under: nothing of it is left on the servers once a case is over.
        self.prefixes = {OURS: f"{PREFIX_ROOT}{token}-ours-", PEER: f"{PREFIX_ROOT}{token}-peer-"}
        #: The side whose work is under way, named when it fails.
        self._side = ""

    def run(self, cases: Sequence[Case]) -> list[Comparison]:
        """Measure every case on both sides; raises :class:`CaseFailed` at the first case that fails."""
        comparisons = []
        for index, case in enumerate(cases, start=1):
            if self.progress is not None:
                self.progress.case_started(index, len(cases), case)
            figures = self._compare(case)
            comparison = Comparison(case, ours=figures[OURS], peer=figures[PEER])
            if self.progress is not None:
                self.progress.case_finished(comparison)
            comparisons.append(comparison)
        return comparisons

    def _compare(self, case: Case) -> dict[str, float]:
        try:
            figures = asyncio.run(self._compare_on_loop(case))
        except CaseFailed as exc:
            raise CaseFailed(f"{case.title} ({self._side}): {exc}") from exc
        except Exception as exc:
            raise CaseFailed(f"{case.title} ({self._side}) failed: {type(exc).__name__}: {exc}") from exc
        for side, figure in figures.items():
            if not figure > 0:
                raise CaseFailed(f"{case.title} ({side}) measured {figure!r} {case.unit}")
        return figures

    async def _compare_on_loop(self, case: Case) -> dict[str, float]:
        """Both sides of ``case`` on this event loop, then their clean-up (also after a failure or Ctrl-C)."""
        layers = {side: make_layer(case.layer, side, self.hosts, self.prefixes[side]) for side in SIDES}
        try:
            figures = await asyncio.wait_for(self._take_turns(case, layers), CASE_TIMEOUT)
        except asyncio.TimeoutError:
            await self._discard_quietly(layers)
            raise CaseFailed(f"no result within {CASE_TIMEOUT:.0f} s") from None
        except BaseException:
            await self._discard_quietly(layers)  # Ctrl-C cancels this task: the keys still go
            raise
        for side, layer in layers.items():
            self._side = side
            await asyncio.wait_for(discard_layer(layer, side), CLEANUP_TIMEOUT)
        return figures

    async def _take_turns(self, case: Case, layers: dict[str, Any]) -> dict[str, float]:
        """Prepare both sides, then time their rounds in turns, so that a machine or server that gets busier
        during the case slows both alike."""
        rounds = {}
        for side in SIDES:
            self._side = side
            rounds[side] = await case.prepare(layers[side], self.sizes)
        seconds: dict[str, list[float]] = {side: [] for side in SIDES}
        total = case.rounds(self.sizes)
        for turn, first in enumerate(range(0, total, case.turn)):
            count = min(case.turn, total - first)
            # Who goes first alternates too: neither side always runs right after the other.
            for side in SIDES if turn % 2 == 0 else SIDES[::-1]:
                self._side = side
                for _ in range(count):
                    seconds[side].append(await rounds[side]())
                await _settle(layers[side])
            if self.progress is not None:
                self.progress.rounds_done(first + count, total)
        return {side: case.figure(seconds[side], self.sizes) for side in SIDES}

    async def _discard_quietly(self, layers: dict[str, Any]) -> None:
        """Clean up after a failure without hiding it: the failure is what the user needs to see."""
        for side, layer in layers.items():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(discard_layer(layer, side), CLEANUP_TIMEOUT)
