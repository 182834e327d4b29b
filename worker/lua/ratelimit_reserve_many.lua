
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval, count, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if max >= 0 then
  local fit = math.floor((max - (tat - now)) / interval) + 1
  if fit < count then count = math.max(fit, 0) end
end
if count > 0 then
  local new = tat + interval * count
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
return {count, string.format('%.0f', tat - now), string.format('%.0f', now)}
