"""Deleting a layer's keys by prefix (``flush`` of both layers), without ``KEYS`` where ``SCAN`` is allowed."""

from __future__ import annotations

from collections import defaultdict

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors
from valkey.crc import key_slot

#: Keys deleted per DEL call.
DELETE_BATCH = 500


def glob_escape(text: str) -> str:
    """``text`` with the glob characters of MATCH escaped, so a prefix like ``a*`` matches only itself."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


async def delete_prefixed(client: avalkey.Valkey, prefix: str, *, one_slot_per_call: bool = False) -> None:
    """Delete every key starting with ``prefix``: found with SCAN, or with KEYS where the ACL refuses SCAN (the
    commands channels-valkey 0.3 documented), deleted in batches so the server never blocks long.

    ``one_slot_per_call`` is for a cluster node, which refuses a DEL whose keys lie in different slots: each batch
    is then sent as one DEL per slot, pipelined.
    """
    pattern = glob_escape(prefix) + "*"

    async def delete(keys: list[bytes]) -> None:
        if not one_slot_per_call:
            await client.delete(*keys)
            return
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for key in keys:
            by_slot[key_slot(key)].append(key)
        async with client.pipeline(transaction=False) as pipe:
            for same_slot in by_slot.values():
                pipe.delete(*same_slot)
            await pipe.execute()

    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                await delete(batch)
                batch = []
        if batch:
            await delete(batch)
    except valkey_errors.NoPermissionError as error:
        if "scan" not in str(error).lower():
            raise
        keys = await client.keys(pattern)
        for start in range(0, len(keys), DELETE_BATCH):
            await delete(keys[start : start + DELETE_BATCH])
