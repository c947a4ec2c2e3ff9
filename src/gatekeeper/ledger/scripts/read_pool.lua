-- Read a pool after removing its expired grants, so the balance is the one at this moment.
--
-- KEYS[1] usage hash, KEYS[2] usage index, KEYS[3..5] the pool's keys.
-- ARGV[1] pool.
-- Returns {} for an unknown pool, else {settings as field/value list, grant ids in expiry
-- order, grant fields as field/value list, now in ms}.

local usage = usage_open(KEYS[1], KEYS[2])
local pool = load_pool(ARGV[1], KEYS[3], KEYS[4], KEYS[5])
if pool == nil then
  return {}
end
local now = now_ms()
expire_grants(pool, now, usage)
save_pool(pool)
return {
  redis.call('HGETALL', pool.key),
  redis.call('ZRANGE', pool.grants, 0, -1),
  redis.call('HGETALL', pool.fields),
  now,
}
