
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[7])) then return {-1, 0} end
local now, cutoff = tonumber(ARGV[1]), tonumber(ARGV[2])
local requeued, waiting = 0, 0
-- The overdue queued jobs (oldest first, by rank) from where the last pass stopped: a job found
-- waiting keeps its place and its age, so the next pass starts after it.
local pos = tonumber(redis.call('HGET', KEYS[7], 'queued') or '0')
local overdue = redis.call('ZCOUNT', KEYS[2], '-inf', cutoff)
if pos >= overdue then pos = 0 end
local kept, last = 0, math.min(pos + tonumber(ARGV[5]), overdue) - 1
-- (ZRANGE with a negative end counts from the end: nothing overdue must read nothing.)
for _, id in ipairs(last >= pos and redis.call('ZRANGE', KEYS[2], pos, last) or {}) do
  local jk = ARGV[4] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'ticket', 'kind', 'queue', 'batch', 'checked')
  local q = h[4] or KEYS[3]
  if h[1] ~= 'queued' then
    redis.call('ZREM', KEYS[2], id)
    expired(h[1], KEYS[5])
  elseif h[6] and tonumber(h[6]) > cutoff then
    kept = kept + 1  -- found (or queued again) less than an orphan period ago
  else
    kept = kept + 1
    -- The job's message: its batch's, kept while it waits, or its own, rebuilt from the template.
    local msg = h[5] and redis.call('GET', ARGV[4] .. 'batch:' .. h[5])
    if not h[5] then msg = message(ARGV[3], id, h[2] or '', h[3] or '', q) end
    if msg and redis.call('LPOS', q, msg, 'RANK', -1, 'MAXLEN', tonumber(ARGV[6])) then
      waiting = waiting + 1  -- still waiting its turn (or on a queue nobody consumes)
    else
      requeue(jk, id, KEYS[2], now, ARGV[3], KEYS[3], true)
      redis.call('HINCRBY', KEYS[5], 'reconciled', 1)
      requeued = requeued + 1
    end
    redis.call('HSET', jk, 'checked', now)
  end
end
redis.call('HSET', KEYS[7], 'queued', pos + kept)
-- Waiting jobs, a few per pass in turn: drop index entries of jobs no longer waiting, and make
-- sure each one's identity job is indexed for the vanished-job check (for waiters indexed
-- before that index existed).
pos = tonumber(redis.call('HGET', KEYS[7], 'waiting') or '0')
if pos >= redis.call('ZCARD', KEYS[4]) then pos = 0 end
kept = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], pos, pos + tonumber(ARGV[8]) - 1)) do
  local h = redis.call('HMGET', ARGV[4] .. 'job:' .. id, 'state', 'after')
  if h[1] ~= 'waiting' then
    redis.call('ZREM', KEYS[4], id)
    expired(h[1], KEYS[5])
  else
    kept = kept + 1
    if h[2] then redis.call('ZADD', KEYS[6], 'NX', now, h[2]) end
  end
end
redis.call('HSET', KEYS[7], 'waiting', pos + kept)
return {requeued, waiting}
