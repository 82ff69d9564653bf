"""The Lua scripts of the Redis read model: each runs atomically on the server.

``COMMIT`` applies a planned batch only if ``applied`` is still where the plan started;
``APPEND_LOGS`` keeps a job's log lines ordered and capped, dropping redeliveries;
``PUT_RUNNER`` keeps the newest heartbeat; ``WIPE`` clears the prefix in bounded steps.
"""

from __future__ import annotations

from typing import Final

COMMIT: Final = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local ops = cmsgpack.unpack(ARGV[3])
for i = 1, #ops do
  redis.call(unpack(ops[i]))
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, tonumber(ARGV[2])}
"""

APPEND_LOGS: Final = """
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local high = -1
if #top == 2 then high = tonumber(top[2]) end
local added = 0
for i = 2, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > high then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    high = seq
    added = added + 1
  elseif #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i], 'LIMIT', 0, 1) == 0 then
    -- a line another rank's runner read a moment earlier: kept in its place
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    added = added + 1
  end
end
if added > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
end
return added
"""

PUT_RUNNER: Final = """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if seen and tonumber(seen) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

#: One step of a wipe: SCAN from ARGV[1] for ARGV[2], UNLINK what it found except keys
#: starting with ARGV[3] (when not empty); returns the next cursor ("0": done). Keys are
#: found by pattern, which Redis Cluster cannot route: the hash tag ``redis`` documents
#: keeps a prefix in one slot.
WIPE: Final = """
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[4])
local keep = ARGV[3]
local doomed = {}
for _, key in ipairs(found[2]) do
  if keep == '' or string.sub(key, 1, #keep) ~= keep then
    doomed[#doomed + 1] = key
  end
  if #doomed >= 500 then
    redis.call('UNLINK', unpack(doomed))
    doomed = {}
  end
end
if #doomed > 0 then
  redis.call('UNLINK', unpack(doomed))
end
return found[1]
"""
#: Keys a wipe step scans (the script runs a few milliseconds per step).
WIPE_COUNT: Final = 5000
