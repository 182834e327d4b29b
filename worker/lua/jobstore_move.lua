
local now, prefix = ARGV[1], ARGV[7]
local movable = {queued = true, scheduled = true, waiting = true}
local done, skipped = 0, 0
for i = 11, #ARGV, 2 do
  local id, text = ARGV[i], ARGV[i + 1]
  local jk = prefix .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'account', 'queue', 'ticket')
  local account = h[2] or 'default'
  if not (h[1] and movable[h[1]] and account == ARGV[3] and (ARGV[3] ~= ARGV[4] or h[3] ~= ARGV[5])) then
    skipped = skipped + 1
  elseif ARGV[2] == 'move' then
    redis.call('HSET', jk, 'job', text, 'account', ARGV[4], 'queue', ARGV[5])
    -- A queued job's message waits on the old queue: a new one (new ticket) on the new queue.
    if h[1] == 'queued' then requeue(jk, id, KEYS[1], now, ARGV[6], ARGV[9]) end
    done = done + 1
  else
    redis.call('SET', prefix .. 'dead:' .. id, text, 'PX', tonumber(ARGV[8]))
    redis.call('ZADD', KEYS[6], tonumber(now), id)
    redis.call('DEL', jk)
    for k = 1, 3 do redis.call('ZREM', KEYS[k], id) end
    redis.call('HINCRBY', KEYS[4], 'dead:' .. ARGV[10], 1)
    redis.call('HINCRBY', KEYS[5], 'dead:' .. ARGV[10], 1)
    -- It ended: jobs waiting for it (of the same account, so moved by this command too) go.
    ended(id, (h[4] or id) .. '.moved-' .. now, 0, KEYS[7], KEYS[8], KEYS[3], KEYS[1], KEYS[4], now, ARGV[6],
      ARGV[9], prefix)
    done = done + 1
  end
end
return {done, skipped}
