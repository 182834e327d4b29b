
local function expired(state, stats)
  -- A record that expired (ATTENTIVE_JOB_RETENTION_HOURS) while its id was still indexed.
  if not state then redis.call('HINCRBY', stats, 'expired', 1) end
end
-- The template split once per script at its placeholders: a message is then one concatenation,
-- not four pattern substitutions over the whole text (43 us a message, most of a release's cost).
local tpl_parts, tpl_names
local function message(tpl, id, ticket, kind, queue)
  if not tpl_parts then
    tpl_parts, tpl_names = {}, {}
    local pos = 1
    while true do
      local s, e, name = string.find(tpl, '@(%u+)@', pos)
      if not s then break end
      tpl_parts[#tpl_parts + 1] = string.sub(tpl, pos, s - 1)
      tpl_names[#tpl_names + 1] = name
      pos = e + 1
    end
    tpl_parts[#tpl_parts + 1] = string.sub(tpl, pos)
  end
  local values = {JOB = id, TICKET = ticket, KIND = kind, QUEUE = queue}
  local out = {}
  for i = 1, #tpl_names do
    out[2 * i - 1] = tpl_parts[i]
    out[2 * i] = values[tpl_names[i]] or ('@' .. tpl_names[i] .. '@')
  end
  out[#out + 1] = tpl_parts[#tpl_parts]
  return table.concat(out)
end
-- keep_age: the job stays where it is in the queued index (a lost message queued again);
-- otherwise it starts a new round, queued now.
local function requeue(jk, id, qindex, now, tpl, fallback, keep_age)
  local round = redis.call('HINCRBY', jk, 'round', 1)
  local ticket = id .. '.' .. round
  local h = redis.call('HMGET', jk, 'kind', 'queue')
  local q = h[2] or fallback
  redis.call('HSET', jk, 'state', 'queued', 'ticket', ticket)
  redis.call('HDEL', jk, 'batch')
  -- RPUSH puts it at the head (consumers BRPOP): it has waited its turn already.
  redis.call('RPUSH', q, message(tpl, id, ticket, h[1] or '', q))
  if not keep_age then redis.call('ZADD', qindex, tonumber(now), id) end
end
-- Queue up to `budget` jobs of a released waiter list, oldest first: those still waiting (one
-- erased meanwhile is skipped; one whose record expired is counted). Returns the jobs queued,
-- the entries taken from the list and the entries left in it.
local function release(list, budget, waiting, qindex, stats, now, tpl, fallback, prefix)
  local ids = redis.call('LRANGE', list, 0, budget - 1)
  if #ids > 0 then redis.call('LTRIM', list, #ids, -1) end
  local queued = 0
  for _, id in ipairs(ids) do
    local jk = prefix .. 'job:' .. id
    local indexed = redis.call('ZREM', waiting, id)
    local state = redis.call('HGET', jk, 'state')
    if state == 'waiting' then
      requeue(jk, id, qindex, now, tpl, fallback)
      queued = queued + 1
    elseif indexed == 1 then
      expired(state, stats)
    end
  end
  return queued, #ids, redis.call('LLEN', list)
end
-- Identity job `id` ended (or vanished): its waiters go. The list is renamed under `token`, so
-- waiters of the same job replayed later start a list of their own; up to `budget` are queued
-- here and the rest, if any, by the promoters (the releasing index).
local function ended(id, token, budget, awaited, releasing, waiting, qindex, stats, now, tpl, fallback, prefix)
  redis.call('ZREM', awaited, id)
  local w = prefix .. 'waiters:' .. id
  if redis.call('EXISTS', w) == 0 then return 0 end
  local r = prefix .. 'released:' .. token
  redis.call('RENAME', w, r)
  local queued, _, left = 0, 0, 1
  if budget > 0 then queued, _, left = release(r, budget, waiting, qindex, stats, now, tpl, fallback, prefix) end
  if left > 0 then redis.call('ZADD', releasing, tonumber(now), token) end
  return queued
end
