"""tests/headless_chromium.py: the pinned browser package is checked before use, and is what the tests drive."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import headless_chromium
from headless_chromium import BrowserUnavailable


def fake_npm_pack(contents: bytes, exit_status: int = 0) -> object:
    """A stand-in for ``npm pack`` that writes a tarball of its own (or fails) instead of fetching the package."""

    def npm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        destination = Path(args[args.index("--pack-destination") + 1])
        if exit_status == 0:
            (destination / "sparticuz-chromium-153.0.0.tgz").write_bytes(contents)
        return subprocess.CompletedProcess(["npm", *args], exit_status, "", "npm error network unreachable")

    return npm


def tarball_with_a_fake_browser() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as package:
        member = tarfile.TarInfo("package/bin/chromium.br")
        payload = b"not a browser"
        member.size = len(payload)
        package.addfile(member, io.BytesIO(payload))
    return data.getvalue()


def test_a_tarball_other_than_the_pinned_one_is_refused_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(headless_chromium, "_npm", fake_npm_pack(tarball_with_a_fake_browser()))
    with pytest.raises(BrowserUnavailable, match=r"not the pinned sha512-jiGWqSvP.*refusing to run it"):
        headless_chromium.ensure_pinned(tmp_path, log=io.StringIO())
    # Neither a browser nor a half-unpacked folder is left for the next run to pick up: only the lock file.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sparticuz-chromium-153.0.0.lock"]


def test_a_failed_fetch_says_what_npm_said_and_how_to_do_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(headless_chromium, "_npm", fake_npm_pack(b"", exit_status=1))
    with pytest.raises(BrowserUnavailable) as raised:
        headless_chromium.ensure_pinned(tmp_path, log=io.StringIO())
    message = str(raised.value)
    assert "`npm pack @sparticuz/chromium@153.0.0` failed (exit status 1)" in message
    assert "npm error network unreachable" in message
    assert "$CHANNELS_VALKEY_CHROMIUM" in message


def test_a_named_browser_that_is_not_an_executable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(headless_chromium.EXECUTABLE_VARIABLE, str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserUnavailable, match="not an executable file"):
        headless_chromium.find_chromium()


def test_unless_a_browser_is_named_the_tests_drive_the_pinned_package_from_the_cache() -> None:
    """The browser the other tests get (fetched here if need be), and that it runs and is of the pinned version."""
    if os.environ.get(headless_chromium.EXECUTABLE_VARIABLE):
        pytest.skip(
            f"${headless_chromium.EXECUTABLE_VARIABLE} names the browser to drive: the package is not used"
        )
    chromium = headless_chromium.find_chromium()
    assert chromium.executable == headless_chromium.install_dir() / "chromium"
    version = subprocess.run(
        [str(chromium.executable), "--version"],
        env=chromium.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    major = headless_chromium.VERSION.split(".")[0]
    assert version.startswith(f"Chromium {major}."), version
