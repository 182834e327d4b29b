
for i = 6, #KEYS do
  local dep = redis.call('GET', KEYS[i])
  if dep and redis.call('EXISTS', ARGV[5] .. 'job:' .. dep) == 1 then
    local w = ARGV[5] .. 'waiters:' .. dep
    if redis.call('LLEN', w) >= tonumber(ARGV[7]) then
      redis.call('HINCRBY', KEYS[5], 'waiters_over_cap', 1)
      break
    end
    redis.call('HSET', KEYS[1], 'state', 'waiting', 'after', dep)
    redis.call('RPUSH', w, ARGV[1])
    redis.call('PEXPIRE', w, tonumber(ARGV[6]))
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
    redis.call('ZADD', KEYS[4], 'NX', tonumber(ARGV[2]), dep)
    return 1
  end
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
redis.call('LPUSH', ARGV[4], ARGV[3])
return 0
