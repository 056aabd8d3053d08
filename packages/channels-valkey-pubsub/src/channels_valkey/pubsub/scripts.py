"""The Lua scripts of worker queues. They declare their keys in KEYS and call only ``redis.call``, which Valkey and
Redis both have; they run through :class:`channels_valkey.sentinel.Script` (by SHA, loaded on NOSCRIPT, EVAL where
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

# send_many: the send above for many messages, entry i being KEYS[i] with its score, capacity and member in
# ARGV[3i .. 3i + 2] (a key may come several times, its messages in order); one reply per entry, as above.
_SEND_MANY = """
local now, expiry = tonumber(ARGV[1]), tonumber(ARGV[2])
local trimmed, added = {}, {}
for i = 1, #KEYS do
    local queue, at = KEYS[i], 3 * i
    local member = ARGV[at + 2]
    added[i] = 1
    if not redis.call('ZSCORE', queue, member) then
        if not trimmed[queue] then
            redis.call('ZREMRANGEBYSCORE', queue, '-inf', now - expiry)
            trimmed[queue] = true
        end
        if redis.call('ZCARD', queue) >= tonumber(ARGV[at + 1]) then
            added[i] = 0
        else
            redis.call('ZADD', queue, ARGV[at], member)
            redis.call('EXPIRE', queue, math.ceil(expiry))
        end
    end
end
return added
"""

# send_many and group_send_many: PUBLISH each (name, payload) pair of ARGV, in order. Pub/Sub names are no keys,
# so KEYS is empty; on a cluster (SPUBLISH, slots) the layer publishes one by one instead.
_PUBLISH_MANY = """
for i = 1, #ARGV, 2 do
    redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""

#: Most messages one bulk script call queues or publishes: about a millisecond of the server's time.
BULK_CHUNK = 250

SEND_SCRIPT = Script(_SEND)
SEND_MANY_SCRIPT = Script(_SEND_MANY)
PUBLISH_MANY_SCRIPT = Script(_PUBLISH_MANY)
