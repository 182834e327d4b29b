
local h = redis.call('HMGET', KEYS[1], 'state', 'ticket', 'job', 'history', 'lost', 'first_seen', 'round', 'slot',
  'account')
if not h[1] then return {'gone'} end
if h[2] ~= ARGV[1] then return {'stale'} end
if h[1] ~= 'queued' then return {'busy'} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'lost', '', 'slot', '')
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return {'ok', h[3], tostring(attempts), h[4] or '[]', h[5] or '', h[6] or '0', h[7] or '0', h[8] or '', h[9] or ''}
