
local budget, queued = tonumber(ARGV[2]), 0
while budget > 0 do
  local token = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not token then break end
  local n, taken, left = release(ARGV[4] .. 'released:' .. token, budget, KEYS[2], KEYS[3], KEYS[4], ARGV[1],
    ARGV[3], ARGV[5], ARGV[4])
  queued = queued + n
  budget = budget - math.max(taken, 1)
  if left == 0 then redis.call('ZREM', KEYS[1], token) end
end
return {queued, redis.call('ZCARD', KEYS[1])}
