"""A worker process for the kill tests: receives numbered messages from one normal channel, one at a time, and
acknowledges each by pushing its number to a list on the server, as a real worker would record its work done.

Run as ``python worker_process.py BACKEND URL PREFIX CHANNEL ACK_KEY``; it prints ``ready`` once its first receive
is waiting, and exits after receiving ``{"type": "stop"}``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

import valkey.asyncio as avalkey


async def work(backend: str, url: str, prefix: str, channel: str, ack_key: str) -> None:
    module, _, name = backend.rpartition(".")
    layer = getattr(importlib.import_module(module), name)(hosts=[url], prefix=prefix, capacity=100_000)
    acks = avalkey.Valkey.from_url(url)
    print("ready", flush=True)
    while True:
        message = await layer.receive(channel)
        if message["type"] == "stop":
            break
        # The work a real worker does with a message: it also keeps the stream going long enough for the test's
        # kill to land in the middle of it, however fast the layer and however busy the machine.
        await asyncio.sleep(0.001)
        await acks.rpush(ack_key, message["n"])
    await acks.aclose()
    await layer.close_pools()


if __name__ == "__main__":
    asyncio.run(work(*sys.argv[1:6]))
