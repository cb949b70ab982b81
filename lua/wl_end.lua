-- wl_end: a waiting ticket leaves the queue: promoted (a hold was created for
-- it), cancelled (by the buyer, or the purchase cap), or expired. Only a
-- 'waiting' ticket changes, so a ticket ends exactly once; the stream entry is
-- acknowledged and deleted either way (the consumer group's pending list and
-- the stream stay bounded). A promotion is also counted in the SKU's
-- promotion rate (wait estimates, lua/wl_wait.lua).
--
-- KEYS[1] fg:{wl:SKU}:queue   KEYS[2] fg:{wl:SKU}:exp   KEYS[3] fg:{wl:SKU}:users
-- KEYS[4] fg:{wl:SKU}:t:<ticket>   KEYS[5] fg:{wl:SKU}:stream
-- KEYS[6] fg:{wl:SKU}:rate  hash, WL_RATE_BUCKETS fields: second mod the window ->
--   '<unix second>:<tickets promoted in it>' (bounded; expires when idle)
-- ARGV[1] ticket   ARGV[2] promoted|cancelled|expired   ARGV[3] reservation id (promoted)
-- ARGV[4] hold deadline ms (promoted)   ARGV[5] reason (optional)
-- Returns {'ok', status} | {'ended', status it had} | {'missing'}
local queue, expz, users, tkey, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ticket, status = ARGV[1], ARGV[2]
local t = redis.call('HMGET', tkey, 'status', 'user', 'entry', 'owner')
if not t[1] then return {'missing'} end
if t[3] then
  redis.call('XACK', stream, 'promoters', t[3])
  redis.call('XDEL', stream, t[3])
end
-- (a 'prequeued' ticket, not yet drawn, may be cancelled too: lua/wl_join.lua)
if t[1] ~= 'waiting' and t[1] ~= 'prequeued' then return {'ended', t[1]} end
local ts = now_ms()
redis.call('HSET', tkey, 'status', status, 'ended', ts)
if status == 'promoted' then
  redis.call('HSET', tkey, 'rid', ARGV[3], 'hold_exp', ARGV[4])
  if KEYS[6] then wl_rate_count(KEYS[6], ts) end
end
if ARGV[5] and ARGV[5] ~= '' then redis.call('HSET', tkey, 'reason', ARGV[5]) end
redis.call('ZREM', queue, ticket)
redis.call('ZREM', expz, ticket)
local buyer = wl_buyer(t[4], t[2])
if redis.call('HGET', users, buyer) == ticket then redis.call('HDEL', users, buyer) end
return {'ok', status}
