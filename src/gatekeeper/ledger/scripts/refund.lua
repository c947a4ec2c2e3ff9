-- Refund a charge by its id, at most once: the tickets go back to the grants they came
-- from, and tickets borrowed from the parent go back to the parent.
--
-- Without a charge record for the id, the script leaves a tombstone (allowed 0, refunded 1,
-- no pool) for the charge record TTL, so that a charge with this id arriving later, such
-- as a delayed packet of a charge that timed out, charges nothing (see charge.lua).
-- KEYS[1] charge record, KEYS[2] usage hash, KEYS[3] usage index,
-- KEYS[4..] three keys per pool named in ARGV[2..] (the charged pool, then its parent).
-- ARGV[1] charge record TTL in seconds, ARGV[2..] pools; none when the caller found no
-- charge record.
-- Returns {'refunded', balance after}; {'none'} when the charge is unknown, refused or
-- already refunded; {'pool', name} when called without pools but a charge record exists,
-- so the caller must call again with that pool.

local record_ttl_s = tonumber(ARGV[1])
local names = {}
for i = 2, #ARGV do table.insert(names, ARGV[i]) end

local record = KEYS[1]
local charge = redis.call('HMGET', record, 'pool', 'allowed', 'cost', 'route', 'hour',
  'debits', 'borrowed', 'parent', 'refunded')
if not charge[2] then
  redis.call('HSET', record, 'allowed', '0', 'refunded', '1')
  redis.call('EXPIRE', record, record_ttl_s)
  return { 'none' }
end
if not charge[1] or charge[2] ~= '1' or charge[9] == '1' then
  return { 'none' }
end
if #names == 0 then
  return { 'pool', charge[1] }
end
local usage = usage_open(KEYS[2], KEYS[3])
local now = now_ms()
local pools, pool, parent = load_charged(charge, names, usage, now)
if pools == nil then return pool end

for _, debit in ipairs(decode_debits(charge[6])) do
  restore(pools, debit, now, usage, 'refund')
end

local cost = tonumber(charge[3])
local borrowed = tonumber(charge[7])
local hour = tonumber(charge[5])
usage_add(usage, pool.name, hour, charge[4], 'refunded', cost)
if borrowed > 0 and parent ~= nil then
  usage_add(usage, pool.name, hour_of(now), '*', 'transfers_out', borrowed)
  usage_add(usage, parent.name, hour_of(now), '*', 'transfers_in', borrowed)
end

save_pool(pool)
if parent ~= nil then save_pool(parent) end
redis.call('HSET', record, 'refunded', '1', 'balance', int(balance(pool)))
return { 'refunded', balance(pool) }
