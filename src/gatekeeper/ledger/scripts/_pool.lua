-- Shared helpers, prepended to every ledger script when it is registered.
--
-- Units: tickets are integers; times are Unix milliseconds from the server's TIME.
-- NOTE: Lua numbers are doubles and redis.call turns a number argument into text with 14
-- significant digits, so every number written to Redis goes through int() first. Tickets
-- stay below 2^53, where doubles are exact.

local NEVER = 9007199254740991          -- expires_at score of a grant without expiry (ms)
-- Largest balance a grant, transfer or auto-refill may leave: above 2^53 - 1, doubles skip
-- integers. NOTE: a refund or settle still returns its tickets to a pool whose balance
-- reached this limit after the charge, and so can take it past the limit.
local MAX_TICKETS = 9007199254740991
local HOUR_MS = 3600000

local function int(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function hour_of(ms)
  return ms - ms % HOUR_MS
end

-- Usage counters: one hash field per pool, hour, route and metric. Route '*' holds the
-- pool-level metrics (expired, transfers caused by borrowing and auto-refill).
local function usage_open(usage_key, index_key)
  return { key = usage_key, index = index_key }
end

local function usage_add(usage, pool, hour, route, metric, n)
  if n == 0 then return end
  local bucket = pool .. '|' .. int(hour) .. '|' .. route
  redis.call('HINCRBY', usage.key, bucket .. '|' .. metric, int(n))
  redis.call('ZADD', usage.index, 'NX', int(hour), bucket)
end

-- Pool state. load_pool returns nil when the pool does not exist.
local function load_pool(name, settings_key, grants_key, fields_key)
  local raw = redis.call('HGETALL', settings_key)
  if #raw == 0 then return nil end
  local p = { name = name, key = settings_key, grants = grants_key, fields = fields_key }
  for i = 1, #raw, 2 do p[raw[i]] = raw[i + 1] end
  p.live = tonumber(p.live or '0')
  p.debt = tonumber(p.debt or '0')
  p.reserve = tonumber(p.reserve or '0')
  p.overdraft = tonumber(p.overdraft or '0')
  return p
end

local function balance(p)
  return p.live - p.debt
end

-- The lowest balance a charge may leave: reserve for ordinary routes, -overdraft for
-- critical ones.
local function floor_of(p, critical)
  if critical then return -p.overdraft end
  return p.reserve
end

local function save_pool(p)
  redis.call('HSET', p.key, 'live', int(p.live), 'debt', int(p.debt))
end

local function grant_field(id, name)
  return id .. ':' .. name
end

local function drop_grant(p, id)
  redis.call('ZREM', p.grants, id)
  redis.call('HDEL', p.fields, grant_field(id, 'tickets'), grant_field(id, 'remaining'),
    grant_field(id, 'expires_at'), grant_field(id, 'created_at'), grant_field(id, 'note'))
end

local function remaining_of(p, id)
  return tonumber(redis.call('HGET', p.fields, grant_field(id, 'remaining')) or '0')
end

-- Add a grant of `amount` tickets; `id` is nil for a new grant. Returns the grant id.
local function insert_grant(p, id, amount, expires_at, created_at, note)
  if id == nil then
    id = string.format('g%012d', redis.call('HINCRBY', p.key, 'seq', 1))
  end
  local score = expires_at
  if expires_at == 0 then score = NEVER end
  redis.call('ZADD', p.grants, int(score), id)
  redis.call('HSET', p.fields,
    grant_field(id, 'tickets'), int(amount),
    grant_field(id, 'remaining'), int(amount),
    grant_field(id, 'expires_at'), int(expires_at),
    grant_field(id, 'created_at'), int(created_at),
    grant_field(id, 'note'), note)
  p.live = p.live + amount
  return id
end

-- Remove grants whose expiry has come; their tickets are counted as expired in the hour
-- they expired.
local function expire_grants(p, now, usage)
  local due = redis.call('ZRANGEBYSCORE', p.grants, '-inf', int(now), 'WITHSCORES')
  for i = 1, #due, 2 do
    local id = due[i]
    local left = remaining_of(p, id)
    p.live = p.live - left
    usage_add(usage, p.name, hour_of(tonumber(due[i + 1])), '*', 'expired', left)
    drop_grant(p, id)
  end
end

-- Credit `amount` tickets: debt is paid first, the rest becomes a grant. Returns the grant
-- id (nil when the debt took everything) and the part that paid debt.
local function credit(p, amount, expires_at, now, note, id)
  local paid = math.min(p.debt, amount)
  p.debt = p.debt - paid
  local rest = amount - paid
  if rest > 0 then
    id = insert_grant(p, id, rest, expires_at, now, note)
  else
    id = nil
  end
  return id, paid
end

-- Take `amount` tickets from the grants that expire first; what they cannot cover becomes
-- debt. Appends {pool, grant id, amount, expires_at} to `debits`. Callers check the floor
-- before calling, so debt passes the overdraft only for a deferred charge, which the
-- request it replays has already used.
local function take(p, amount, debits)
  local left = amount
  while left > 0 do
    local first = redis.call('ZRANGE', p.grants, 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    local id = first[1]
    local expires_at = tonumber(redis.call('HGET', p.fields, grant_field(id, 'expires_at')) or '0')
    local available = remaining_of(p, id)
    local used = math.min(available, left)
    if used == available then
      drop_grant(p, id)
    else
      redis.call('HINCRBY', p.fields, grant_field(id, 'remaining'), int(-used))
    end
    p.live = p.live - used
    left = left - used
    table.insert(debits, { p.name, id, used, expires_at })
  end
  if left > 0 then
    p.debt = p.debt + left
    table.insert(debits, { p.name, '', left, 0 })
  end
end

-- Give debited tickets back to the grants they came from (debt first). A grant that has
-- been spent in the meantime comes back under its id; one that has expired since counts
-- its share as expired now.
local function restore(pools, debit, now, usage, note)
  local p = pools[debit[1]]
  local amount = debit[3]
  if debit[2] == '' then
    credit(p, amount, 0, now, note, nil)
    return
  end
  local id, expires_at = debit[2], debit[4]
  if expires_at ~= 0 and expires_at <= now then
    usage_add(usage, p.name, hour_of(now), '*', 'expired', amount)
    return
  end
  if redis.call('ZSCORE', p.grants, id) then
    redis.call('HINCRBY', p.fields, grant_field(id, 'remaining'), int(amount))
    p.live = p.live + amount
  else
    credit(p, amount, expires_at, now, note, id)
  end
end

-- Debits are stored in the charge record as "pool,id,amount,expires_at;...".
local function encode_debits(debits)
  local parts = {}
  for _, d in ipairs(debits) do
    table.insert(parts, d[1] .. ',' .. d[2] .. ',' .. int(d[3]) .. ',' .. int(d[4]))
  end
  return table.concat(parts, ';')
end

local function decode_debits(text)
  local debits = {}
  for pool, id, amount, expires_at in string.gmatch(text or '', '([^,;]+),([^,;]*),(%d+),(%d+)') do
    table.insert(debits, { pool, id, tonumber(amount), tonumber(expires_at) })
  end
  return debits
end

-- Move `amount` tickets from `src` to `dst`, grant by grant, keeping each expiry date.
-- The caller checks that `src` has them above its floor.
local function move_tickets(src, dst, amount, now, note)
  local debits = {}
  take(src, amount, debits)
  for _, d in ipairs(debits) do
    credit(dst, d[3], d[4], now, note, nil)
  end
end

-- Open every pool named in ARGV, three keys each, starting at KEYS[first_key].
local function open_pools(first_key, names)
  local pools = {}
  for i, name in ipairs(names) do
    local k = first_key + (i - 1) * 3
    pools[name] = { name = name, key = KEYS[k], grants = KEYS[k + 1], fields = KEYS[k + 2] }
  end
  return pools
end

local function load_named(pools, name)
  local slot = pools[name]
  if slot == nil then return nil end
  if slot.live ~= nil then return slot end
  local p = load_pool(name, slot.key, slot.grants, slot.fields)
  if p ~= nil then pools[name] = p end
  return p
end

-- Load the pool a charge record names, and its parent, with their expired grants removed.
-- KEYS from index 4 hold three keys per name in ``names``; ``charge`` is the record's
-- HMGET of pool (1) and parent (8). Returns pools, pool, parent, or nil and an error reply
-- when the record and the named pools disagree.
local function load_charged(charge, names, usage, now)
  if charge[1] ~= names[1] then
    return nil, redis.error_reply('charge record names pool ' .. charge[1] .. ', not ' .. names[1])
  end
  local pools = open_pools(4, names)
  local pool = load_named(pools, names[1])
  if pool == nil then
    return nil, redis.error_reply('pool ' .. names[1] .. ' of the charge no longer exists')
  end
  expire_grants(pool, now, usage)
  local parent = nil
  if charge[8] ~= '' then
    parent = load_named(pools, charge[8])
    if parent ~= nil then expire_grants(parent, now, usage) end
  end
  return pools, pool, parent
end
