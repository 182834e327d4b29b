
local promoted, reaped = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], id)
  local jk = ARGV[4] .. 'job:' .. id
  local state = redis.call('HGET', jk, 'state')
  if state == 'scheduled' then
    requeue(jk, id, KEYS[4], ARGV[1], ARGV[3], KEYS[3])
    promoted = promoted + 1
  else
    expired(state, KEYS[5])
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[2], id)
  local jk = ARGV[4] .. 'job:' .. id
  local state = redis.call('HGET', jk, 'state')
  if state == 'running' then
    redis.call('HSET', jk, 'lost', ARGV[1])
    requeue(jk, id, KEYS[4], ARGV[1], ARGV[3], KEYS[3])
    reaped = reaped + 1
  else
    expired(state, KEYS[5])
  end
end
return {promoted, reaped}
