"""The Lua scripts the Redis source runs on a server (one node of a cluster alike): a read of
value and TTL that tells a key of another type, and a compare-and-delete."""

CAS = """
local deleted = 0
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[i] then  -- pcall: a key that is no string now is simply not equal
    redis.call('DEL', key)
    deleted = deleted + 1
  end
end
return deleted
"""
CAS_CHUNK = 2000
READ = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then  -- WRONGTYPE: a hash, list, set, zset or stream; its type, PTTL -3
    out[2 * i - 1] = redis.call('TYPE', key)['ok']
    out[2 * i] = -3
  else
    out[2 * i - 1] = value
    out[2 * i] = redis.call('PTTL', key)
  end
end
return out
"""
WRONG_TYPE = -3  # the PTTL READ gives a key that holds no string (Redis's own are -1 and -2)
READ_CHUNK = 2000  # keys per script call: a few milliseconds of Redis time each
