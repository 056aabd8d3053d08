"""``examples/chat/run.py`` itself: ``hatch run demo`` runs it, its URL line serves the page, every way of stopping
it leaves nothing behind, and bad options are refused by name."""

from __future__ import annotations

import asyncio
import http.client
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomllib
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from servers.process import ValkeyProcess

REPO = Path(__file__).resolve().parents[2]
RUN_PY = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "chat", "run.py")
TIMEOUT = 10.0


def get(url: str, path: str = "") -> tuple[int, str, str]:
    """``GET`` a page of the demo: status, content type and body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
    try:
        connection.request("GET", parts.path + path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def test_hatch_run_demo_is_this_launcher_with_the_arguments_passed_on() -> None:
    """The README says ``hatch run demo``; every other test starts run.py directly, so the script line is checked
    here. Running hatch itself would have to build the default environment, which CI (``hatch test``) never does."""
    scripts = tomllib.loads((REPO / "hatch.toml").read_text())["envs"]["default"]["scripts"]
    script = scripts.get("demo")
    if isinstance(script, list) and len(script) == 1:
        [script] = script
    assert isinstance(script, str), (
        f"hatch.toml: envs.default.scripts.demo must be one command, not {script!r}"
    )
    words = shlex.split(script)
    # `python` is the environment's interpreter; hatch replaces {args} with what follows `hatch run demo`, and
    # drops those words altogether from a script that has no {args}.
    assert len(words) == 3, f"demo = {script!r}: expected `python examples/chat/run.py {{args}}`"
    assert words[0] == "python", f"demo = {script!r} must run the environment's `python`"
    assert (REPO / words[1]).resolve() == Path(RUN_PY).resolve(), f"demo = {script!r} runs another file"
    assert words[2] == "{args}", f"demo = {script!r} must end with {{args}} to pass the options on"

    # Run it as hatch does: through the shell, from the project root, with the environment's scripts first on PATH.
    command = script.replace("{args}", shlex.join(["--workers", "0"]))
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        command,
        shell=True,
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: hatch run demo "), result.stderr
    assert "argument --workers: invalid worker count 0" in result.stderr


def test_the_printed_url_serves_the_chat(demo: Any) -> None:
    assert demo.url.startswith("http://127.0.0.1:")
    assert demo.workers == 2

    status, content_type, body = get(demo.url)
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert "Chat rooms" in body
    assert f"{demo.layer} layer" in body

    status, _, body = get(demo.url, "room/lobby/")
    assert status == 200
    assert "#lobby" in body
    assert '<script src="/static/rooms/chat.js">' in body

    status, content_type, body = get(demo.url, "static/rooms/chat.js")
    assert (status, content_type) == (200, "text/javascript")
    assert "new WebSocket(" in body

    status, _, body = get(demo.url, "room/no%20spaces/")
    assert status == 400
    assert "invalid room name &#x27;no spaces&#x27;" in body


async def hold_a_connection(demo: Any) -> Any:
    """An open WebSocket, so that stopping the demo also has to close live connections."""
    client = await connect(demo.ws_url("lobby"), origin=demo.origin, open_timeout=TIMEOUT)
    welcome = await asyncio.wait_for(client.recv(), TIMEOUT)
    assert '"welcome"' in welcome
    return client


@pytest.mark.parametrize(
    ("signum", "valkey_from"),
    [
        (signal.SIGINT, "embedded"),
        (signal.SIGTERM, "VALKEY_URL"),
        (signal.SIGHUP, "--hosts"),
    ],
    ids=["SIGINT-embedded-server", "SIGTERM-VALKEY_URL", "SIGHUP-hosts"],
)
async def test_a_signal_stops_everything_with_status_0(
    launch_demo: Callable[..., Any], valkey_server: ValkeyProcess, signum: int, valkey_from: str
) -> None:
    if valkey_from == "embedded":
        demo = launch_demo("--layer", "core")
        assert demo.valkey_urls != [valkey_server.url()]
        demo.note_embedded_server()
    elif valkey_from == "VALKEY_URL":
        demo = launch_demo("--layer", "pubsub", env={"VALKEY_URL": valkey_server.url()})
        assert demo.valkey_urls == [valkey_server.url()]
    else:
        demo = launch_demo("--layer", "core", "--workers", "3", "--hosts", valkey_server.url())
        assert demo.valkey_urls == [valkey_server.url()]
    # run.py, uvicorn's master, its workers (and multiprocessing's resource tracker): all seen before the stop.
    assert len(demo.started) >= 2 + demo.workers, demo.started
    assert get(demo.url)[0] == 200
    client = await hold_a_connection(demo)

    status = await asyncio.to_thread(demo.stop, signum)

    assert status == 0, demo.log()
    demo.assert_all_gone()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.recv(), TIMEOUT)
    await client.close()


def test_uvicorn_dying_stops_the_demo_with_a_failure(
    launch_demo: Callable[..., Any], valkey_server: ValkeyProcess
) -> None:
    demo = launch_demo("--hosts", valkey_server.url())
    master = demo.uvicorn_master()

    os.kill(master.pid, signal.SIGKILL)

    status = demo.process.wait(TIMEOUT * 3)
    assert status == 1, demo.log()
    assert "uvicorn exited with status -9" in demo.log()
    # The workers outlived their master: run.py must have stopped them through uvicorn's process group.
    demo.assert_all_gone()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--layer", "redis", "argument --layer: invalid choice: 'redis' (choose from core, pubsub)"),
        ("--port", "70000", "argument --port: invalid port 70000: give a number from 0 to 65535"),
        ("--workers", "0", "argument --workers: invalid worker count 0: give a whole number from 1 to 64"),
    ],
    ids=["layer", "port", "workers"],
)
def test_a_bad_option_exits_2_naming_it(option: str, value: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, RUN_PY, option, value], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert expected in result.stderr.replace("'core', 'pubsub'", "core, pubsub")
    assert result.stdout == ""


def test_an_unreachable_valkey_is_named_before_anything_starts(
    server_factory: Callable[..., ValkeyProcess],
) -> None:
    stopped = server_factory()
    stopped.stop()  # a port that was just a server's and now refuses connections
    result = subprocess.run(
        [sys.executable, RUN_PY, "--port", "0", "--hosts", stopped.url()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"cannot reach Valkey at {stopped.url()}" in result.stderr
    assert "Uvicorn running" not in result.stderr
    assert result.stdout == ""
