
local now, ttl, pttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 6
for _ = 1, tonumber(ARGV[5]) do
  local jk, queued, id, nf = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  redis.call('HSET', jk, unpack(ARGV, a, a + nf - 1))
  redis.call('PEXPIRE', jk, ttl)
  a = a + nf
  local np = tonumber(ARGV[a])
  for p = a + 1, a + np do
    redis.call('SADD', ARGV[p], id)
    redis.call('PEXPIRE', ARGV[p], pttl)
  end
  a = a + np + 1
  for l = a + 1, a + 2 * tonumber(ARGV[a]), 2 do redis.call('SADD', ARGV[l], ARGV[l + 1]) end
  a = a + 2 * tonumber(ARGV[a]) + 1
  if queued == '1' then redis.call('ZADD', KEYS[2], now, id) end
end
for _ = 1, tonumber(ARGV[a]) do
  local q, msg, bk = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if bk ~= '' then redis.call('SET', bk, msg, 'PX', ttl) end
  redis.call('LPUSH', q, msg)
  a = a + 3
end
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', KEYS[1], 'enqueued', ARGV[4]) end
return 1
