-- Change a pool's settings, creating the pool when it does not exist, and audit the change.
--
-- KEYS[1] tenant's pool set, KEYS[2] audit stream, KEYS[3..5] the pool's keys.
-- ARGV[1] pool, ARGV[2] actor, ARGV[3] parent of a new pool ('' for none),
-- ARGV[4] the change as JSON text for the audit entry,
-- ARGV[5..] field/value pairs to set; an empty value removes the setting.
-- Returns {1 when the pool was created, else 0}.

local name = ARGV[1]
local actor = ARGV[2]
local default_parent = ARGV[3]
local change = ARGV[4]

local now = now_ms()
local created = 0
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'created_at', int(now), 'live', '0', 'debt', '0',
    'parent', default_parent)
  redis.call('SADD', KEYS[1], name)
  created = 1
end

for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  else
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
-- 'parent' stays a field even when empty, so a detached team pool keeps no parent.
if redis.call('HEXISTS', KEYS[3], 'parent') == 0 then
  redis.call('HSET', KEYS[3], 'parent', '')
end

local pool = load_pool(name, KEYS[3], KEYS[4], KEYS[5])
redis.call('XADD', KEYS[2], '*', 'action', 'settings', 'pool', name, 'actor', actor,
  'change', change, 'balance', int(balance(pool)), 'at', int(now))
return { created }
