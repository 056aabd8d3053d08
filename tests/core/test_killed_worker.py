"""Two worker processes consume one normal channel and one is killed with SIGKILL mid-stream: at most the message
its receive was handed dies with it (the spec's at-most-once), none is delivered twice, and nothing waits in a
dead process's buffer. The Pub/Sub layer's worker channels are held to the same promise."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from servers.process import ValkeyProcess

Eventually = Callable[..., Awaitable[None]]

WORKER = Path(__file__).with_name("worker_process.py")
TOTAL = 3000

BACKENDS = pytest.mark.parametrize(
    "backend",
    ["channels_valkey.core.ValkeyChannelLayer", "channels_valkey.pubsub.ValkeyPubSubChannelLayer"],
    ids=["core", "pubsub"],
)


def _layer(backend: str, url: str, prefix: str) -> Any:
    module, _, name = backend.rpartition(".")
    return getattr(importlib.import_module(module), name)(hosts=[url], prefix=prefix, capacity=100_000)


def _start_worker(backend: str, url: str, prefix: str, ack_key: str) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), backend, url, prefix, "jobs", ack_key],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        worker.kill()
        worker.stdout.close()
        pytest.fail(f"the worker process did not start (exit status {worker.wait()})")
    return worker


@BACKENDS
async def test_a_worker_killed_mid_stream_loses_at_most_the_message_it_was_handed(
    backend: str, valkey_server: ValkeyProcess, key_prefix: str, eventually: Eventually
) -> None:
    url = valkey_server.url()
    ack_key = f"{key_prefix}acks"
    layer = _layer(backend, url, key_prefix)
    workers: list[subprocess.Popen[str]] = []

    def acknowledged() -> int:
        with valkey_server.client() as client:
            return int(client.llen(ack_key))

    try:
        # A backlog before the workers start, so that a worker that took more than it was asked for would have
        # plenty to take, and the kill comes mid-stream.
        for n in range(TOTAL):
            await layer.send("jobs", {"type": "job", "n": n})
        workers.extend(_start_worker(backend, url, key_prefix, ack_key) for _ in range(2))
        await eventually(lambda: acknowledged() >= TOTAL // 10, "both workers to be busy")
        workers[0].kill()
        done_at_kill = acknowledged()
        await asyncio.to_thread(workers[0].wait, 10)
        assert done_at_kill < TOTAL, "the workers were done before the kill: nothing was killed mid-stream"
        # Sent only now: a stop message the other worker took would have ended it before the kill.
        await layer.send("jobs", {"type": "stop"})
        assert await asyncio.to_thread(workers[1].wait, 60) == 0
        with valkey_server.client() as client:
            acks = [int(n) for n in client.lrange(ack_key, 0, -1)]
        assert len(acks) == len(set(acks)), "a message was delivered twice"
        lost = sorted(set(range(TOTAL)) - set(acks))
        print(
            f"\n{backend}: killed at {done_at_kill} done; {len(acks)} of {TOTAL} acknowledged, lost: {lost}"
        )
        assert len(lost) <= 1, f"the killed worker took {len(lost)} messages with it: {lost}"
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
        await layer.flush()
        await layer.close_pools()
