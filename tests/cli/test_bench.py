"""``channels-valkey bench``: both layers against channels_redis 4 on a real server, and its failures.

The measuring runs with ``--quick`` (a few seconds). The figures themselves are not judged (a busy machine can
make either side slow); what must hold is that every case produced figures for both sides, that the ratio is
computed from them, that the run cleaned up after itself, and that the errors come early and clearly.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from channels_valkey.cli.measure import BETTER_COLOUR, CASES, PREFIX_ROOT, WORSE_COLOUR

from servers.fault_proxy import FaultProxy
from servers.process import ValkeyProcess, free_port, wait_until

#: The rows of a run of both layers, in table order.
ALL_CASES = [(case.layer, case.name) for case in CASES]
#: The command line tool, run as a program.
COMMAND = [sys.executable, "-m", "channels_valkey.cli"]
#: Longest a --quick run may take here (it takes a few seconds; the machine may be busy with other tests).
QUICK_RUN_TIMEOUT = 120.0


def leftovers(server: ValkeyProcess) -> tuple[list[bytes], list[bytes]]:
    """Keys and subscribed Pub/Sub channels of any bench run on ``server``."""
    with server.client() as client:
        keys = list(client.scan_iter(match=f"{PREFIX_ROOT}*", count=1000))
        channels = client.pubsub_channels(f"{PREFIX_ROOT}*")
    return keys, channels


def test_quick_json_run_of_both_layers(run_cli, valkey_server: ValkeyProcess, tmp_path: Path) -> None:
    chart = tmp_path / "ratios.png"
    result = run_cli("bench", "--hosts", valkey_server.url(), "--quick", "--json", "--plot", str(chart))
    assert result.status == 0, result.stderr

    document = result.json()
    assert [(row["layer"], row["case"]) for row in document["cases"]] == ALL_CASES
    for row in document["cases"]:
        assert row["ours"] > 0, row
        assert row["channels_redis"] > 0, row
        assert row["ratio"] == pytest.approx(row["ours"] / row["channels_redis"], rel=1e-12)
    assert document["quick"] is True
    assert document["server"].startswith("Valkey ")
    assert document["versions"]["channels-redis"].startswith("4.")

    # Progress: one plain line per case on stderr (not a terminal here), in order, with both figures.
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == len(ALL_CASES)
    for number, (line, (layer, case)) in enumerate(zip(progress, ALL_CASES, strict=True), start=1):
        assert line.startswith(f"[{number}/{len(ALL_CASES)}] {layer}")
        assert case in line
        assert "ours " in line
        assert "channels_redis " in line

    # The chart: a PNG image with a bar in the colour of each verdict the run reached.
    image = matplotlib.image.imread(chart)
    assert image.ndim == 3
    assert image.shape[0] > 300
    assert image.shape[1] > 600
    assert image.shape[2] in (3, 4)
    colours = {
        BETTER_COLOUR if (row["ratio"] > 1) == row["higher_is_better"] else WORSE_COLOUR
        for row in document["cases"]
    }
    for colour in colours:
        assert _has_colour(image, colour)

    # Nothing of the run is left on the server: keys deleted, subscriptions gone with the connections.
    prefixes = document["prefixes"]
    assert set(prefixes) == {"ours", "channels_redis"}
    assert all(prefix.startswith(PREFIX_ROOT) for prefix in prefixes.values())
    wait_until(
        lambda: leftovers(valkey_server) == ([], []),
        timeout=10,
        message=lambda: f"no keys or channels of the bench left (found {leftovers(valkey_server)})",
    )


def _has_colour(image: np.ndarray, colour: str) -> bool:
    """Whether some pixels of ``image`` (RGB(A) floats) have the ``#rrggbb`` colour ``colour``."""
    wanted = np.array([int(colour[index : index + 2], 16) / 255 for index in (1, 3, 5)])
    return bool(np.any(np.all(np.abs(image[:, :, :3] - wanted) < 0.02, axis=2)))


def test_table_with_progress_on_a_terminal(valkey_server: ValkeyProcess) -> None:
    """Run as a program whose stderr is a terminal: the progress line of a case is rewritten in place."""
    controller, terminal = pty.openpty()
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.append(_read_all(controller)), daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            [*COMMAND, "bench", "--hosts", valkey_server.url(), "--quick", "--layer", "pubsub"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        terminal = -1
        stdout, _ = process.communicate(timeout=QUICK_RUN_TIMEOUT)
        reader.join(timeout=QUICK_RUN_TIMEOUT)
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    progress = "".join(shown)
    assert process.returncode == 0, progress

    lines = stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("layer")))
    assert lines[header].split() == [
        "layer",
        "case",
        "unit",
        "ours",
        "channels_redis",
        "ours/channels_redis",
        "ours",
        "is",
    ]
    rows = lines[header + 2 :]
    pubsub_cases = [name for layer, name in ALL_CASES if layer == "pubsub"]
    assert len(rows) == len(pubsub_cases)
    for row, name in zip(rows, pubsub_cases, strict=True):
        assert row.startswith(f"pubsub  {name}")
    assert "Valkey " in lines[0]

    # Each case's line is drawn when it starts, then rewritten ("\r" + erase) in place, last with the result.
    assert progress.count("\n") == len(pubsub_cases)
    for number, line in enumerate(progress.split("\n")[:-1], start=1):
        drawings = line.split("\r\x1b[K")
        assert drawings[0] == ""
        assert drawings[1].startswith(f"[{number}/{len(pubsub_cases)}] pubsub ")
        assert drawings[1].endswith(": preparing both sides...")
        assert "ours/channels_redis" in drawings[-1]


def _read_all(controller: int) -> str:
    """Everything written to the terminal whose controlling side is ``controller``, until it is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # Linux: EIO once the last writer has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_unreachable_host_fails_before_measuring(run_cli) -> None:
    url = f"valkey://127.0.0.1:{free_port()}"
    result = run_cli("bench", "--hosts", url, "--quick")
    assert result.status == 1
    assert f"cannot reach {url}/0" in result.stderr
    assert result.stdout == ""


def test_a_failed_connection_is_not_retried(run_cli, fault_proxy: FaultProxy) -> None:
    fault_proxy.refuse()  # every connection is reset as soon as it is made
    result = run_cli("bench", "--hosts", fault_proxy.url(), "--quick")
    assert result.status == 1
    assert f"cannot reach {fault_proxy.url()}" in result.stderr
    assert result.stdout == ""
    assert fault_proxy.accepted_connections == 1


@pytest.mark.parametrize(
    ("missing", "extra_argv", "named"),
    [
        ("channels_redis.core", [], "channels_redis is not installed"),
        ("matplotlib", ["--plot", "chart.png"], "matplotlib is not installed"),
    ],
)
def test_a_missing_extra_names_what_to_install(
    run_cli,
    monkeypatch: pytest.MonkeyPatch,
    valkey_server: ValkeyProcess,
    tmp_path: Path,
    missing: str,
    extra_argv: list[str],
    named: str,
) -> None:
    # A None entry in sys.modules makes `import` fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.chdir(tmp_path)
    result = run_cli("bench", "--hosts", valkey_server.url(), "--quick", *extra_argv)
    assert result.status == 2
    assert named in result.stderr
    assert 'pip install "channels-valkey[bench]"' in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []
    assert leftovers(valkey_server) == ([], [])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--hosts", "localhost:6379"], "localhost:6379"),
        (["--hosts", "valkey://127.0.0.1:1", "--plot", "chart.jpg"], "'chart.jpg' does not end in .png"),
        (["--hosts", "valkey://127.0.0.1:1", "--plot", "no/such/folder/chart.png"], "does not exist"),
        (["--hosts", "valkey://127.0.0.1:1", "--layer", "redis"], "invalid choice: 'redis'"),
    ],
)
def test_bad_options_fail_before_measuring(run_cli, argv: list[str], named: str) -> None:
    result = run_cli("bench", *argv)
    assert result.status == 2
    assert named in result.stderr
    assert result.stdout == ""
