-- Move tickets between two pools of one tenant, exactly once per idempotency key.
--
-- Tickets leave the source grant by grant, the one that expires first first, and arrive
-- in the target as grants with the same expiry dates (paying the target's debt first).
-- KEYS[1] operation record, KEYS[2] tenant's pool set, KEYS[3] audit stream,
-- KEYS[4] usage hash, KEYS[5] usage index, KEYS[6..8] source pool keys,
-- KEYS[9..11] target pool keys.
-- ARGV[1] source pool, ARGV[2] target pool, ARGV[3] tickets, ARGV[4] actor,
-- ARGV[5] idempotency key, ARGV[6] operation record TTL in seconds,
-- ARGV[7] parent of the target when it is created ('' for none),
-- ARGV[8] the request as canonical text.
-- Returns {status, source balance, target balance, 1 when replayed}; status is 'ok',
-- 'missing' (no source pool), 'insufficient' (the source balance is lower), 'full' (the
-- target balance would pass MAX_TICKETS) or 'reused' (the key belongs to another grant or
-- transfer).

local source_name = ARGV[1]
local target_name = ARGV[2]
local tickets = tonumber(ARGV[3])
local actor = ARGV[4]
local idempotency_key = ARGV[5]
local op_ttl_s = tonumber(ARGV[6])
local target_parent = ARGV[7]
local request = ARGV[8]

local op = KEYS[1]
local stored = redis.call('HMGET', op, 'status', 'source_balance', 'target_balance', 'request')
if stored[1] then
  -- Grants and transfers of a tenant share the key space: only the same request replays.
  if stored[4] ~= request then
    return { 'reused', 0, 0, 0 }
  end
  return { stored[1], tonumber(stored[2]), tonumber(stored[3]), 1 }
end

local now = now_ms()
local usage = usage_open(KEYS[4], KEYS[5])
local source = load_pool(source_name, KEYS[6], KEYS[7], KEYS[8])
if source == nil then
  return { 'missing', 0, 0, 0 }
end
expire_grants(source, now, usage)
if balance(source) < tickets then
  save_pool(source)
  return { 'insufficient', balance(source), 0, 0 }
end

local target = load_pool(target_name, KEYS[9], KEYS[10], KEYS[11])
if target == nil then
  redis.call('HSET', KEYS[9], 'created_at', int(now), 'live', '0', 'debt', '0',
    'parent', target_parent)
  redis.call('SADD', KEYS[2], target_name)
  target = load_pool(target_name, KEYS[9], KEYS[10], KEYS[11])
end
expire_grants(target, now, usage)
if tickets > MAX_TICKETS - balance(target) then
  save_pool(source)
  save_pool(target)
  return { 'full', balance(source), balance(target), 0 }
end

move_tickets(source, target, tickets, now, 'transfer from ' .. source_name)
save_pool(source)
save_pool(target)

redis.call('HSET', op, 'status', 'ok', 'source_balance', int(balance(source)),
  'target_balance', int(balance(target)), 'request', request)
redis.call('EXPIRE', op, op_ttl_s)
redis.call('XADD', KEYS[3], '*', 'action', 'transfer', 'pool', source_name, 'to', target_name,
  'tickets', int(tickets), 'actor', actor, 'key', idempotency_key,
  'balance', int(balance(source)), 'to_balance', int(balance(target)), 'at', int(now))
return { 'ok', balance(source), balance(target), 0 }
