
local held = {}
for i = 3, #ARGV, 2 do
  local id, ticket = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', ARGV[2] .. 'job:' .. id, 'ticket', 'state')
  if h[1] == ticket and h[2] == 'running' then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), id)
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
