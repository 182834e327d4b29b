
local checked, vanished = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  checked = checked + 1
  local w = ARGV[4] .. 'waiters:' .. id
  if redis.call('EXISTS', w) == 0 then
    redis.call('ZREM', KEYS[1], id)  -- nothing waits for it any more
  elseif redis.call('EXISTS', ARGV[4] .. 'job:' .. id) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), id)  -- pending: look again an orphan period later
  else
    local token = id .. '.gone-' .. ARGV[1]
    redis.call('ZREM', KEYS[1], id)
    redis.call('RENAME', w, ARGV[4] .. 'released:' .. token)
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), token)
    vanished = vanished + 1
  end
end
return {checked, vanished}
