"""Instructions per operation, counted with callgrind: a layer's cost without this machine's noise in it.

Run: ``hatch run bench:instructions fan-out --size 100`` (or ``round-trip``); it needs valgrind (Debian:
``apt-get install valgrind``). It starts a Valkey server, runs each side of the case twice under callgrind, with
``--rounds`` and three times as many, and prints the instructions per operation of the difference, so that the
start, the imports and the connections cancel out. Each run takes about a minute; the figures repeat within a
percent or two where wall-clock times on this 2-core machine drift by tens of percent.

The sides are the benchmark's (``benchmarks/checked_flows.py``), each on a fresh server prefix:

- ``round-trip``: a process-channel message sent and received, ``--size`` times a round; ``ours``, ``peer``
  (channels_redis's Pub/Sub layer) and ``bare``, the floor: ``BareRoundTrip``, a ``PUBLISH`` and its message on two
  connections with no layer.
- ``fan-out``: ``fan_out`` to ``--size`` local members, one group message a round; ``ours``, ``peer`` and
  ``floor``, the benchmark's own work with no layer (``receives_alone``: the same gather of timed receives, each
  returning at once). ``peer / floor`` is the most any layer could measure against the peer, costing nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from checked_flows import BareRoundTrip, Fan, Stream, fan_out, receives_alone, round_trip  # noqa: E402

SIDES = {"round-trip": ("ours", "peer", "bare"), "fan-out": ("ours", "peer", "floor")}


def _layer(side: str, port: int) -> Any:
    hosts = [("127.0.0.1", port)]
    prefix = f"instr-{uuid.uuid4().hex[:8]}"
    if side == "peer":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=hosts, prefix=prefix)
    from channels_valkey.pubsub import ValkeyPubSubChannelLayer

    return ValkeyPubSubChannelLayer(hosts=hosts, prefix=prefix)


async def _round_trips(side: str, port: int, size: int, rounds: int) -> None:
    if side == "bare":
        bare = await BareRoundTrip.open("127.0.0.1", port, b"instructions.bare", bytes(100))
        for _ in range((rounds + 1) * size):  # the first round warms up, as below
            await bare.round_trip()
        bare.close()
        return
    layer = _layer(side, port)
    stream = Stream(layer, await layer.new_channel())
    for _ in range((rounds + 1) * size):
        await round_trip(stream)
    await layer.flush()


async def _fan_outs(side: str, port: int, size: int, rounds: int) -> None:
    layer = _layer("ours" if side == "floor" else side, port)
    channels = [await layer.new_channel() for _ in range(size)]
    for channel in channels:
        await layer.group_add("instructions", channel)
    fan = Fan.of(layer, channels, "instructions")
    for _ in range(rounds + 1):
        if side == "floor":
            await receives_alone(fan)
        elif await fan_out(fan) != size:
            raise AssertionError("a fan-out reached fewer members than it should")
    await layer.flush()


def _child(case: str, side: str, port: int, size: int, rounds: int) -> None:
    work = _round_trips if case == "round-trip" else _fan_outs
    asyncio.run(work(side, port, size, rounds))


def _instructions(case: str, side: str, port: int, size: int, rounds: int) -> int:
    """The instructions callgrind counts for a whole child process doing ``rounds`` rounds (after one to warm up)."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    command += ["--child", case, side, "--port", str(port), "--size", str(size), "--rounds", str(rounds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=sorted(SIDES))
    parser.add_argument("side", nargs="?", help="one side only (default: every side of the case)")
    parser.add_argument("--size", type=int, default=100, help="round trips a round, or members of the group")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--port", type=int, help="an existing server's port (default: start one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        _child(options.case, options.side, options.port, options.size, options.rounds)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    sides = [options.side] if options.side else SIDES[options.case]
    with tempfile.TemporaryDirectory(prefix="instr") as folder:
        from servers.topologies import start_standalone

        server = start_standalone(Path(folder), "instructions") if options.port is None else None
        port = options.port if server is None else server.port
        try:
            counts = {}
            for side in sides:
                low = _instructions(options.case, side, port, options.size, options.rounds)
                high = _instructions(options.case, side, port, options.size, 3 * options.rounds)
                counts[side] = (high - low) / (2 * options.rounds * options.size)
                print(f"{options.case} {side}: {counts[side]:,.0f} instructions per operation", flush=True)
        finally:
            if server is not None:
                server.stop()
    if "peer" in counts:
        for side, count in counts.items():
            if side != "peer":
                print(f"peer / {side}: {counts['peer'] / count:.2f}")


if __name__ == "__main__":
    main()
