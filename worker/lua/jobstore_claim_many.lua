
local out = {}
for i = 3, #ARGV, 2 do
  local id, ticket = ARGV[i], ARGV[i + 1]
  local jk = ARGV[2] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'ticket', 'job', 'history', 'lost', 'first_seen', 'round', 'slot',
    'account')
  if not h[1] then
    out[#out + 1] = {'gone'}
  elseif h[2] ~= ticket then
    out[#out + 1] = {'stale'}
  elseif h[1] ~= 'queued' then
    out[#out + 1] = {'busy'}
  else
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'state', 'running', 'lost', '', 'slot', '')
    redis.call('HDEL', jk, 'batch')
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), id)
    redis.call('ZREM', KEYS[2], id)
    out[#out + 1] = {'ok', h[3], tostring(attempts), h[4] or '[]', h[5] or '', h[6] or '0', h[7] or '0',
      h[8] or '', h[9] or ''}
  end
end
redis.call('DEL', KEYS[3])
return out
