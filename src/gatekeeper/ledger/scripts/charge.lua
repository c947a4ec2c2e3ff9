-- Charge one request to the first candidate pool that exists, atomically with its usage.
--
-- A deferred charge replays a request that was forwarded while Redis failed. It is never
-- refused: what the pool and, with borrow on, its parent cannot pay down to their floors
-- becomes the pool's debt, and usage counts the full cost.
-- KEYS[1] charge record, KEYS[2] usage hash, KEYS[3] usage index,
-- KEYS[4..] three keys per pool named in ARGV[8..] (settings, grants, grant fields).
-- ARGV[1] cost in tickets, ARGV[2] route name, ARGV[3] critical (0/1), ARGV[4] shadow (0/1),
-- ARGV[5] deferred (0/1), ARGV[6] charge record TTL in seconds,
-- ARGV[7] number of candidate pools,
-- ARGV[8..] candidate pools in order, then the parents of team candidates.
-- Returns {pool, allowed 0/1, tickets charged, balance after, 1 when replayed,
-- 1 when a refund of this id came first}.

local cost = tonumber(ARGV[1])
local route = ARGV[2]
local critical = ARGV[3] == '1'
local shadow = ARGV[4] == '1'
local deferred = ARGV[5] == '1'
local record_ttl_s = tonumber(ARGV[6])
local candidates = tonumber(ARGV[7])
local names = {}
for i = 8, #ARGV do table.insert(names, ARGV[i]) end

local record = KEYS[1]
local first = redis.call('HMGET', record, 'pool', 'allowed', 'cost', 'balance')
if first[2] then
  if not first[1] then
    -- refund.lua found no charge under this id and left a tombstone: the charge is void.
    return { names[1], 0, 0, 0, 1, 1 }
  end
  return { first[1], tonumber(first[2]), tonumber(first[3]), tonumber(first[4]), 1, 0 }
end

local usage = usage_open(KEYS[2], KEYS[3])
local pools = open_pools(4, names)
local pool = nil
for i = 1, candidates do
  pool = load_named(pools, names[i])
  if pool ~= nil then break end
end
if pool == nil then
  return { names[candidates], 0, 0, 0, 0, 0 }
end

local now = now_ms()
local hour = hour_of(now)
expire_grants(pool, now, usage)
local parent = nil
if pool.parent and pool.parent ~= '' then
  parent = load_named(pools, pool.parent)
  if parent ~= nil then expire_grants(parent, now, usage) end
end

-- Decide: the pool pays down to its floor, and a team pool with borrow on takes the rest
-- from its parent down to the parent's floor. A deferred charge takes what the parent has
-- above its floor even when that is not enough, and the pool owes the rest.
local own = math.max(0, math.min(cost, balance(pool) - floor_of(pool, critical)))
local borrowed = 0
if own < cost and parent ~= nil and pool.borrow == '1' then
  local parent_room = math.max(0, balance(parent) - floor_of(parent, critical))
  if parent_room >= cost - own then
    borrowed = cost - own
  elseif deferred then
    borrowed = parent_room
  end
end
local owed = 0
if deferred then owed = cost - own - borrowed end

local function finish(allowed, charged, debits)
  save_pool(pool)
  if parent ~= nil then save_pool(parent) end
  local after = balance(pool)
  redis.call('HSET', record, 'pool', pool.name, 'allowed', allowed, 'cost', int(charged),
    'balance', int(after), 'route', route, 'hour', int(hour), 'debits', encode_debits(debits),
    'borrowed', int(borrowed), 'parent', pool.parent or '', 'refunded', '0',
    'critical', critical and '1' or '0', 'deferred', deferred and '1' or '0')
  redis.call('EXPIRE', record, record_ttl_s)
  return { pool.name, allowed, charged, after, 0, 0 }
end

if own + borrowed + owed < cost then
  usage_add(usage, pool.name, hour, route, 'refused', 1)
  if not shadow then
    save_pool(pool)
    if parent ~= nil then save_pool(parent) end
    return { pool.name, 0, 0, balance(pool), 0, 0 }
  end
  -- A shadow route never refuses: the request goes through and nothing is charged.
  usage_add(usage, pool.name, hour, route, 'requests', 1)
  borrowed = 0
  return finish(1, 0, {})
end

local debits = {}
if borrowed > 0 then
  take(parent, borrowed, debits)
  usage_add(usage, parent.name, hour, '*', 'transfers_out', borrowed)
  usage_add(usage, pool.name, hour, '*', 'transfers_in', borrowed)
end
-- take() turns what the grants cannot cover into debt.
take(pool, own + owed, debits)
usage_add(usage, pool.name, hour, route, 'requests', 1)
usage_add(usage, pool.name, hour, route, 'tickets', cost)

-- Auto-refill: once the balance is below the threshold, move the configured amount from
-- the parent, as far as the parent has tickets above its reserve and the pool has room.
local below = tonumber(pool.refill_below or '')
local amount = tonumber(pool.refill_amount or '')
if below and amount and parent ~= nil and balance(pool) < below then
  local moved = math.max(0, math.min(amount, balance(parent) - floor_of(parent, false),
    MAX_TICKETS - balance(pool)))
  if moved > 0 then
    move_tickets(parent, pool, moved, now, 'auto-refill from ' .. parent.name)
    usage_add(usage, parent.name, hour, '*', 'transfers_out', moved)
    usage_add(usage, pool.name, hour, '*', 'transfers_in', moved)
  end
end

return finish(1, cost, debits)
