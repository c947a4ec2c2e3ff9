-- Grant tickets to a pool, creating the pool, exactly once per idempotency key.
--
-- New tickets pay the pool's debt first; the rest becomes a grant. The audit stream gets
-- one entry in the same step.
-- KEYS[1] operation record, KEYS[2] tenant's pool set, KEYS[3] audit stream,
-- KEYS[4] usage hash, KEYS[5] usage index, KEYS[6..8] the pool's keys.
-- ARGV[1] pool, ARGV[2] tickets, ARGV[3] expires_at in ms (0: never), ARGV[4] note,
-- ARGV[5] actor, ARGV[6] idempotency key, ARGV[7] operation record TTL in seconds,
-- ARGV[8] parent of a new pool ('' for none), ARGV[9] the request as canonical text.
-- Returns {status, grant id, tickets, remaining, expires_at, created_at, note, balance,
-- debt, debt paid, 1 when replayed}; status 'expired' when expires_at has passed,
-- {'reused'} when the key belongs to another grant or transfer, {'full', balance} when the
-- balance would pass MAX_TICKETS.

local name = ARGV[1]
local tickets = tonumber(ARGV[2])
local expires_at = tonumber(ARGV[3])
local note = ARGV[4]
local actor = ARGV[5]
local idempotency_key = ARGV[6]
local op_ttl_s = tonumber(ARGV[7])
local default_parent = ARGV[8]
local request = ARGV[9]

local op = KEYS[1]
local FIELDS = { 'status', 'grant', 'tickets', 'remaining', 'expires_at', 'created_at', 'note',
  'balance', 'debt', 'paid' }
local stored = redis.call('HMGET', op, unpack(FIELDS))
if stored[1] then
  -- Grants and transfers of a tenant share the key space: only the same request replays.
  if redis.call('HGET', op, 'request') ~= request then
    return { 'reused' }
  end
  table.insert(stored, 1)
  return stored
end

local now = now_ms()
if expires_at ~= 0 and expires_at <= now then
  return { 'expired' }
end

local usage = usage_open(KEYS[4], KEYS[5])
local pool = load_pool(name, KEYS[6], KEYS[7], KEYS[8])
if pool == nil then
  redis.call('HSET', KEYS[6], 'created_at', int(now), 'live', '0', 'debt', '0',
    'parent', default_parent)
  redis.call('SADD', KEYS[2], name)
  pool = load_pool(name, KEYS[6], KEYS[7], KEYS[8])
end
expire_grants(pool, now, usage)
if tickets > MAX_TICKETS - balance(pool) then
  save_pool(pool)
  return { 'full', balance(pool) }
end

local id, paid = credit(pool, tickets, expires_at, now, note, nil)
if id == nil then
  id = string.format('g%012d', redis.call('HINCRBY', pool.key, 'seq', 1))
end
save_pool(pool)

local values = { 'ok', id, int(tickets), int(tickets - paid), int(expires_at), int(now), note,
  int(balance(pool)), int(pool.debt), int(paid) }
local pairs_out = {}
for i, field in ipairs(FIELDS) do
  table.insert(pairs_out, field)
  table.insert(pairs_out, values[i])
end
redis.call('HSET', op, 'request', request, unpack(pairs_out))
redis.call('EXPIRE', op, op_ttl_s)

redis.call('XADD', KEYS[3], '*', 'action', 'grant', 'pool', name, 'tickets', int(tickets),
  'actor', actor, 'key', idempotency_key, 'balance', int(balance(pool)), 'grant', id,
  'expires_at', int(expires_at), 'debt_paid', int(paid), 'at', int(now))

table.insert(values, 0)
return values
