"""The Lua scripts of the core layer, and how they are called.

Every script declares the keys it touches in KEYS and calls only commands that channels-valkey 0.3 documented for
its ACL (ZADD, ZCOUNT, ZRANGE, ZREMRANGEBYSCORE, EXPIRE, ...), so a user restricted to that list keeps working.
They run through :class:`channels_valkey.sentinel.Script`: by SHA (EVALSHA), loaded on a NOSCRIPT reply, and with
EVAL for good on a shard whose ACL refuses EVALSHA.
"""

from __future__ import annotations

from channels_valkey.sentinel import Script

#: Most keys one script call may touch: larger groups are sent in several calls, so the server never blocks long
#: (a call of 500 new queues took 6-9 ms of the server's time under load here, one of 100 about 0.4 ms).
MAX_KEYS_PER_CALL = 100
#: Largest group whose members the members script returns itself; a larger one is read by a plain ZRANGE after it,
#: as a script's reply of 20,000 members held the server for 2.4-4.2 ms against 0.5 ms for ZRANGE.
MEMBERS_IN_SCRIPT = 1000
#: Most messages (or groups) one bulk script call handles: about a millisecond of the server's time.
BULK_CHUNK = 250

_SEND = """
local queue = KEYS[1]
local now, expiry, capacity, member = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', queue, 0, now - expiry)
if redis.call('ZCOUNT', queue, '-inf', '+inf') >= capacity then return 0 end
redis.call('ZADD', queue, now, member)
redis.call('EXPIRE', queue, expiry)
return 1
"""

# Queues one message in each of `queues` queues, KEYS[first + i], with its capacity in ARGV[base + i] and its
# bytes in ARGV[base + queues + i], at score `now`; the reply is the number of queues that were full.
_QUEUE_IN_EACH = """
local dropped = 0
for i = 1, queues do
    local queue = KEYS[first + i]
    redis.call('ZREMRANGEBYSCORE', queue, 0, now - expiry)
    if redis.call('ZCOUNT', queue, '-inf', '+inf') < tonumber(ARGV[base + i]) then
        redis.call('ZADD', queue, now, ARGV[base + queues + i])
        redis.call('EXPIRE', queue, expiry)
    else
        dropped = dropped + 1
    end
end
return dropped
"""

_GROUP_SEND = (
    """
local queues, first, base = #KEYS, 0, 2
local now, expiry = ARGV[1], ARGV[2]
"""
    + _QUEUE_IN_EACH
)

# send_many and group_send_many: entry i is KEYS[i] with its score, capacity and member in ARGV[3i .. 3i + 2]; a
# key may come several times (its messages in order). One reply per entry: 1 queued, 0 the queue was full. Each
# queue is trimmed and counted once, and given its expiry once if anything was added: the count is kept here (ZADD
# answers how many members it added: none for bytes already queued, as with a random prefix of 0).
_SEND_MANY = """
local now, expiry = tonumber(ARGV[1]), ARGV[2]
local counts, grown, added = {}, {}, {}
for i = 1, #KEYS do
    local queue, at = KEYS[i], 3 * i
    local count = counts[queue]
    if not count then
        redis.call('ZREMRANGEBYSCORE', queue, 0, now - expiry)
        count = redis.call('ZCOUNT', queue, '-inf', '+inf')
    end
    if count < tonumber(ARGV[at + 1]) then
        count = count + redis.call('ZADD', queue, ARGV[at], ARGV[at + 2])
        grown[queue] = true
        added[i] = 1
    else
        added[i] = 0
    end
    counts[queue] = count
end
for queue in pairs(grown) do redis.call('EXPIRE', queue, expiry) end
return added
"""

_GROUP_ADD = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# The members, those older than ARGV[1] removed first; nil (false) when there are more than ARGV[2].
_GROUP_MEMBERS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') > tonumber(ARGV[2]) then return false end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# group_send with the members the caller guesses the group has: KEYS[1] the group, KEYS[2..] the queues of those
# members; ARGV: the expiry cutoff of members, the most members a reply may hold, the score, the queues' expiry,
# the number n of members guessed, their n names, then each queue's capacity and each queue's message. When the
# group (its old members removed) is exactly the guess, the messages are queued and the number of full queues is
# the reply; otherwise nothing is written and the reply is the members, or nil (false) when there are too many.
_GROUP_SEND_IF_MEMBERS = (
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local count = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
if count > tonumber(ARGV[2]) then return false end
local guessed = tonumber(ARGV[5])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if count ~= guessed then return members end
local expected = {}
for i = 1, guessed do expected[ARGV[5 + i]] = true end
for i = 1, count do
    if not expected[members[i]] then return members end
end
local queues, first, base = #KEYS - 1, 1, 5 + guessed
local now, expiry = ARGV[3], ARGV[4]
"""
    + _QUEUE_IN_EACH
)

# group_send_many: the members of each group in KEYS, those older than ARGV[1] removed first.
_MANY_GROUPS_MEMBERS = """
local members = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
    members[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return members
"""


SEND_SCRIPT = Script(_SEND)
SEND_MANY_SCRIPT = Script(_SEND_MANY)
MANY_GROUPS_MEMBERS_SCRIPT = Script(_MANY_GROUPS_MEMBERS)
GROUP_SEND_SCRIPT = Script(_GROUP_SEND)
GROUP_ADD_SCRIPT = Script(_GROUP_ADD)
GROUP_MEMBERS_SCRIPT = Script(_GROUP_MEMBERS)
GROUP_SEND_IF_MEMBERS_SCRIPT = Script(_GROUP_SEND_IF_MEMBERS)
