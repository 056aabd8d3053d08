"""Deleting a layer's keys by prefix (``flush`` of both layers), without ``KEYS`` where ``SCAN`` is allowed."""

from __future__ import annotations

import valkey.asyncio as avalkey
from valkey import exceptions as valkey_errors

#: Keys deleted per DEL call.
DELETE_BATCH = 500


def glob_escape(text: str) -> str:
    """``text`` with the glob characters of MATCH escaped, so a prefix like ``a*`` matches only itself."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


async def delete_prefixed(client: avalkey.Valkey, prefix: str) -> None:
    """Delete every key starting with ``prefix``: found with SCAN, or with KEYS where the ACL refuses SCAN (the
    commands channels-valkey 0.3 documented), deleted in batches so the server never blocks long."""
    pattern = glob_escape(prefix) + "*"
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    except valkey_errors.NoPermissionError as error:
        if "scan" not in str(error).lower():
            raise
        keys = await client.keys(pattern)
        for start in range(0, len(keys), DELETE_BATCH):
            await client.delete(*keys[start : start + DELETE_BATCH])
