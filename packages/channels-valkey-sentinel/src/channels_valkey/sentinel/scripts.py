"""Lua scripts and how both layers run them: by SHA, loaded on ``NOSCRIPT``, with ``EVAL`` where ``EVALSHA`` is
refused.

``EVALSHA`` sends 40 bytes instead of the script, so it is the normal way. A server that does not have the script
yet (restarted, failed over, flushed) answers ``NOSCRIPT`` and the call is made again with ``EVAL``, which also
loads it. An ACL that refuses ``EVALSHA`` (channels-valkey 0.3's documented ACL allowed only ``EVAL``) is noted on
the shard's :class:`~channels_valkey.sentinel.ShardFacts`, and its scripts go by ``EVAL`` from then on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from valkey import exceptions as valkey_errors

from channels_valkey.sentinel.exceptions import ShardUnavailable

if TYPE_CHECKING:
    from channels_valkey.sentinel.connections import ConnectionManager

logger = logging.getLogger("channels_valkey.sentinel")


class Script:
    """One Lua script and its SHA1, run on a shard's pipelined command lane."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(
        self,
        connections: ConnectionManager,
        shard: int,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        idempotent: bool,
        retry: bool = True,
    ) -> Any:
        """The script's reply, run on ``shard`` with ``keys`` and ``args`` under the connection retries.

        ``idempotent`` and ``retry`` as for :meth:`ConnectionManager.execute_command`: a script that writes
        something new each time is not retried once it may have run; with ``retry=False`` it is not retried at all.
        """
        facts = connections.facts(shard)
        if not facts.evalsha_refused:
            try:
                return await connections.execute_command(
                    shard, "EVALSHA", self.sha, len(keys), *keys, *args, idempotent=idempotent, retry=retry
                )
            except valkey_errors.NoScriptError:
                pass
            except (
                ShardUnavailable
            ) as error:  # the connections call an ACL refusal fatal; EVALSHA has a way out
                if not refuses_evalsha(error.cause):
                    raise
                logger.info("shard %d refuses EVALSHA; using EVAL from now on", shard)
                facts.evalsha_refused = True
        return await connections.execute_command(
            shard, "EVAL", self.source, len(keys), *keys, *args, idempotent=idempotent, retry=retry
        )


def refuses_evalsha(error: BaseException) -> bool:
    """Whether ``error`` is an ACL refusing ``EVALSHA`` in particular (``EVAL`` may still be allowed)."""
    return isinstance(error, valkey_errors.NoPermissionError) and "evalsha" in str(error).lower()
