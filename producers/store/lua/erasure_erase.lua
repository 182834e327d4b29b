
local jobs, dead, running = 0, 0, 0
local gone = {}
for i = 1, tonumber(ARGV[2]) do gone[ARGV[2 + i]] = true end
for id in pairs(gone) do
  jobs = jobs + redis.call('DEL', ARGV[1] .. 'job:' .. id)
  dead = dead + redis.call('DEL', ARGV[1] .. 'dead:' .. id)
  redis.call('DEL', ARGV[1] .. 'waiters:' .. id)
  if redis.call('ZSCORE', KEYS[4], id) then running = 1 end
  for i = 2, 7 do redis.call('ZREM', KEYS[i], id) end
end
local first = 3 + tonumber(ARGV[2])
for i = first, #ARGV do
  local marker = ARGV[i]
  local holder = redis.call('GET', marker)
  if holder and gone[holder] then redis.call('DEL', marker) end
end
for i = 9, #KEYS do redis.call('DEL', KEYS[i]) end
if jobs > 0 then redis.call('HINCRBY', KEYS[1], 'erased', jobs) end
redis.call('INCR', KEYS[8])
return {jobs, dead, running}
