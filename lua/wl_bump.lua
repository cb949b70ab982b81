-- wl_bump: a promotion attempt for a ticket ended "sold out" on every shard
-- (each shard now holds a sticky walk-on verdict for that attempt's key), so
-- the next attempt must use a fresh key. Compare-and-set on the attempt number:
-- two promoters that both saw attempt n move the ticket to n+1 only once.
--
-- KEYS[1] fg:{wl:SKU}:t:<ticket>   ARGV[1] attempt number seen
-- Returns the current attempt number.
local t = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if t[1] == 'waiting' and t[2] == ARGV[1] then
  return redis.call('HINCRBY', KEYS[1], 'attempt', 1)
end
return tonumber(t[2] or '0')
