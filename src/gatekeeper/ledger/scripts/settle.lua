-- Settle a charge to the actual cost the upstream reported.
--
-- A lower cost gives the difference back to the grants it came from, latest debit first.
-- A higher cost takes the difference from the charged pool, never from the parent, down to
-- the same floor as the charge: the reserve for ordinary routes, -overdraft for critical ones.
-- A deferred charge takes all of it, and what the grants cannot cover becomes debt, because
-- its request was served while Redis failed.
-- KEYS[1] charge record, KEYS[2] usage hash, KEYS[3] usage index,
-- KEYS[4..] three keys per pool named in ARGV[2..] (the charged pool, then its parent).
-- ARGV[1] actual cost in tickets.
-- Returns {tickets charged in total, balance after} or {} when the charge is unknown,
-- refused or refunded. The total is less than the actual cost when the floor stopped it.

local actual = tonumber(ARGV[1])
local names = {}
for i = 2, #ARGV do table.insert(names, ARGV[i]) end

local record = KEYS[1]
local charge = redis.call('HMGET', record, 'pool', 'allowed', 'cost', 'route', 'hour',
  'debits', 'borrowed', 'parent', 'refunded', 'critical', 'deferred')
if not charge[1] or charge[2] ~= '1' or charge[9] == '1' then
  return {}
end
local usage = usage_open(KEYS[2], KEYS[3])
local now = now_ms()
local pools, pool, parent = load_charged(charge, names, usage, now)
if pools == nil then return pool end

local cost = tonumber(charge[3])
local borrowed = tonumber(charge[7])
local hour = tonumber(charge[5])
local debits = decode_debits(charge[6])
local charged = cost

if actual < cost then
  local back = cost - actual
  local returned_to_parent = 0
  while back > 0 and #debits > 0 do
    local last = debits[#debits]
    local part = math.min(back, last[3])
    restore(pools, { last[1], last[2], part, last[4] }, now, usage, 'settle')
    if last[1] ~= pool.name then returned_to_parent = returned_to_parent + part end
    last[3] = last[3] - part
    if last[3] == 0 then table.remove(debits) end
    back = back - part
  end
  usage_add(usage, pool.name, hour, charge[4], 'refunded', cost - actual)
  if returned_to_parent > 0 and parent ~= nil then
    usage_add(usage, pool.name, hour_of(now), '*', 'transfers_out', returned_to_parent)
    usage_add(usage, parent.name, hour_of(now), '*', 'transfers_in', returned_to_parent)
    borrowed = borrowed - returned_to_parent
  end
  charged = actual
elseif actual > cost then
  local extra = actual - cost
  if charge[11] ~= '1' then
    local floor = floor_of(pool, charge[10] == '1')
    extra = math.max(0, math.min(extra, balance(pool) - floor))
  end
  take(pool, extra, debits)
  usage_add(usage, pool.name, hour, charge[4], 'tickets', extra)
  charged = cost + extra
end

save_pool(pool)
if parent ~= nil then save_pool(parent) end
redis.call('HSET', record, 'cost', int(charged), 'debits', encode_debits(debits),
  'borrowed', int(borrowed), 'balance', int(balance(pool)))
return { charged, balance(pool) }
