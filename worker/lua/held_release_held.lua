
local prefix, max_batch = ARGV[5], tonumber(ARGV[7])
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then return {0, 0} end
redis.call('ZREM', KEYS[1], unpack(ids))
local order, by_queue = {}, {}
for _, id in ipairs(ids) do
  local jk = prefix .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'kind', 'queue')
  if h[1] == 'scheduled' then
    redis.call('ZREM', KEYS[2], id)
    local ticket = id .. '.' .. redis.call('HINCRBY', jk, 'round', 1)
    redis.call('HSET', jk, 'state', 'queued', 'ticket', ticket)
    redis.call('HDEL', jk, 'batch')
    redis.call('ZADD', KEYS[3], tonumber(ARGV[1]), id)
    local q = h[3] or ARGV[6]
    if not by_queue[q] then by_queue[q] = {}; order[#order + 1] = q end
    local members = by_queue[q]
    members[#members + 1] = {id = id, ticket = ticket, kind = h[2] or '', ttl = redis.call('PTTL', jk)}
  end
end
local released, messages = 0, 0
for _, q in ipairs(order) do
  local members = by_queue[q]
  for first = 1, #members, max_batch do
    local last = math.min(first + max_batch - 1, #members)
    local msg
    if first == last then
      local m = members[first]
      msg = message(ARGV[3], m.id, m.ticket, m.kind, q)
    else
      messages = messages + 1
      local bid = ARGV[8] .. '-' .. messages
      local tickets, counts, kinds, ttl = {}, {}, {}, -1
      for i = first, last do
        local m = members[i]
        tickets[#tickets + 1] = m.ticket
        if not counts[m.kind] then counts[m.kind] = 0; kinds[#kinds + 1] = m.kind end
        counts[m.kind] = counts[m.kind] + 1
        ttl = math.max(ttl, m.ttl)
        redis.call('HSET', prefix .. 'job:' .. m.id, 'batch', bid)
      end
      if ttl <= 0 then ttl = tonumber(ARGV[10]) end
      table.sort(kinds)
      local parts = {}
      for _, kind in ipairs(kinds) do parts[#parts + 1] = kind .. ' x' .. counts[kind] end
      local values = {JOB = bid, QUEUE = q, TICKETS = table.concat(tickets, ARGV[9]),
        SUMMARY = '(' .. (last - first + 1) .. ' jobs: ' .. table.concat(parts, ', ') .. ')'}
      msg = string.gsub(ARGV[4], '@(%u+)@', values)
      redis.call('SET', prefix .. 'batch:' .. bid, msg, 'PX', ttl)
    end
    -- LPUSH: behind the work already queued (consumers BRPOP), in the order they were held.
    redis.call('LPUSH', q, msg)
    released = released + last - first + 1
  end
end
return {released, #ids}
