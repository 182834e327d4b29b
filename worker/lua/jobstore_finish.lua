
local h = redis.call('HMGET', KEYS[1], 'ticket', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
local over = false
if ARGV[3] == 'delivered' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[4], 'delivered', 1)
  redis.call('HINCRBY', KEYS[7], 'delivered', 1)
  over = true
elseif ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'history', ARGV[5])
  redis.call('ZADD', KEYS[3], tonumber(ARGV[6]), ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'retries', 1)
elseif ARGV[3] == 'defer' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'slot', ARGV[10])
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[6]), ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'deferred', 1)
else
  redis.call('SET', KEYS[5], ARGV[7], 'PX', tonumber(ARGV[9]))
  redis.call('ZADD', KEYS[6], tonumber(ARGV[4]), ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[4], 'dead:' .. ARGV[8], 1)
  redis.call('HINCRBY', KEYS[7], 'dead:' .. ARGV[8], 1)
  over = true
end
if over then
  -- Jobs waiting for this (identity) job go now, whichever way it ended: a first chunk here,
  -- the rest from the promoters, so this script stays short however many wait.
  ended(ARGV[2], ARGV[1], tonumber(ARGV[14]), KEYS[10], KEYS[11], KEYS[9], KEYS[8], KEYS[4], ARGV[4], ARGV[11],
    ARGV[13], ARGV[12])
end
-- What the metrics observe of this end (`worker.observed`): field, increment, field, increment...
for i = 15, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[12], ARGV[i], ARGV[i + 1]) end
return 1
