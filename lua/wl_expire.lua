-- wl_expire: waiting tickets past their own deadline leave the queue as
-- 'expired' (they no longer count against capacity or positions).
--
-- KEYS[1] fg:{wl:SKU}:queue   KEYS[2] fg:{wl:SKU}:exp   KEYS[3] fg:{wl:SKU}:users
-- KEYS[4] fg:{wl:SKU}:stream
-- ARGV[1] ticket key prefix fg:{wl:SKU}:t:   ARGV[2] batch limit
-- Returns the number of tickets expired.
local queue, expz, users, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, limit = ARGV[1], tonumber(ARGV[2])
local ts = now_ms()
local due = redis.call('ZRANGEBYSCORE', expz, '-inf', ts, 'LIMIT', 0, limit)
local n = 0
for _, ticket in ipairs(due) do
  local tkey = prefix .. ticket
  local t = redis.call('HMGET', tkey, 'status', 'user', 'entry', 'owner')
  if t[1] == 'waiting' or t[1] == 'prequeued' then
    redis.call('HSET', tkey, 'status', 'expired', 'ended', ts)
    local buyer = wl_buyer(t[4], t[2])
    if redis.call('HGET', users, buyer) == ticket then redis.call('HDEL', users, buyer) end
    if t[3] then
      redis.call('XACK', stream, 'promoters', t[3])
      redis.call('XDEL', stream, t[3])
    end
    n = n + 1
  end
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', expz, ticket)
end
return n
