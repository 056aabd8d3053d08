"""The Lua script of worker queues. It declares its one key in KEYS and calls only ``redis.call``, which Valkey and
Redis both have; it runs through :class:`channels_valkey.sentinel.Script` (by SHA, loaded on NOSCRIPT, EVAL where
EVALSHA is refused)."""

from __future__ import annotations

from channels_valkey.sentinel import Script

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


SEND_SCRIPT = Script(_SEND)
