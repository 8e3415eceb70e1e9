"""Lua scripts: storing an entry with its tag index and purging tags are each one atomic call."""

from __future__ import annotations

__all__ = ["PURGE_LUA", "RELEASE_LUA", "STORE_LUA"]

# KEYS: entry, lock. ARGV: blob, px, lock token, epoch at fetch start, mark prefix, tag prefix,
# tags... A tag purged after the fetch started (its mark is newer than the start epoch) means the
# fetched body may predate a write: storing it would let a client read its own stale write.
STORE_LUA = """
local start = tonumber(ARGV[4])
local stored = 0
local fresh = true
for i = 7, #ARGV do
  local mark = redis.call('GET', ARGV[5] .. ARGV[i])
  if mark and tonumber(mark) > start then fresh = false break end
end
if fresh then
  local px = tonumber(ARGV[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
  for i = 7, #ARGV do
    local tag = ARGV[6] .. ARGV[i]
    redis.call('SADD', tag, KEYS[1])
    if redis.call('PTTL', tag) < px then redis.call('PEXPIRE', tag, px) end
  end
  stored = 1
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return stored
"""

# KEYS: epoch, purge channel. ARGV: tag prefix, mark prefix, mark ttl ms, tags... Returns the
# number of entries deleted, and tells every instance (their L1) which tags went.
PURGE_LUA = """
local epoch = redis.call('INCR', KEYS[1])
local deleted = 0
for i = 4, #ARGV do
  local tag = ARGV[1] .. ARGV[i]
  local members = redis.call('SMEMBERS', tag)
  for j = 1, #members, 500 do
    deleted = deleted + redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
  end
  redis.call('DEL', tag)
  redis.call('SET', ARGV[2] .. ARGV[i], epoch, 'PX', ARGV[3])
end
redis.call('PUBLISH', KEYS[2], 't ' .. table.concat(ARGV, ' ', 4))
return deleted
"""

# KEYS: lock. ARGV: token. Release only a lock we still own.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
