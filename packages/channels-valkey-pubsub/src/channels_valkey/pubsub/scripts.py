"""The Lua script of worker queues, and how it is called (by SHA, loaded on NOSCRIPT, EVAL where EVALSHA is
refused). It declares its one key in KEYS and calls only ``redis.call``, which Valkey and Redis both have."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from valkey import exceptions as valkey_errors

#: Sends one command and returns its reply: a client's ``execute_command``, or the cluster's routed one.
Execute = Callable[..., Awaitable[Any]]

# Returns 1 when the message is in the queue, 0 when the queue is at capacity. A member is unique (random
# prefix); one found already there (a call sent twice, which the layer never does on purpose) is not added again.
_SEND = """
local queue = KEYS[1]
local now, expiry, capacity, member = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if redis.call('ZSCORE', queue, member) then return 1 end
redis.call('ZREMRANGEBYSCORE', queue, '-inf', now - expiry)
if redis.call('ZCARD', queue) >= capacity then return 0 end
redis.call('ZADD', queue, now, member)
redis.call('EXPIRE', queue, math.ceil(expiry))
return 1
"""


class Script:
    """One Lua script, run by SHA with EVAL as the fallback."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, execute: Execute, keys: Sequence[str], args: Sequence[Any], *, use_eval: bool) -> Any:
        if not use_eval:
            try:
                return await execute("EVALSHA", self.sha, len(keys), *keys, *args)
            except valkey_errors.NoScriptError:
                pass
        return await execute("EVAL", self.source, len(keys), *keys, *args)


def refuses_evalsha(error: BaseException) -> bool:
    """Whether ``error`` is an ACL refusing EVALSHA in particular (EVAL may still be allowed)."""
    return isinstance(error, valkey_errors.NoPermissionError) and "evalsha" in str(error).lower()


SEND_SCRIPT = Script(_SEND)
