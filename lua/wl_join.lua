-- wl_join: a buyer who met "sold out" joins the SKU's waitlist. All waitlist
-- keys of a SKU share the hash tag {wl:SKU}.
--
-- KEYS[1] fg:{wl:SKU}:queue  zset ticket -> arrival number (the waiting tickets, in order)
-- KEYS[2] fg:{wl:SKU}:stream stream of ticket ids, read by the promoters' consumer group
-- KEYS[3] fg:{wl:SKU}:users  hash buyer -> live ticket (one live ticket per buyer;
--   lib.lua's wl_buyer: a storefront's buyers are its own)
-- KEYS[4] fg:{wl:SKU}:idem:<key>   KEYS[5] fg:{wl:SKU}:seq   KEYS[6] fg:{wl:SKU}:t:<ticket>
-- KEYS[7] fg:{wl:SKU}:exp    zset ticket -> ticket deadline (ms)
-- KEYS[8] fg:{wl:SKU}:state  'open' while the shards' gates may be set
-- ARGV[1] ticket   ARGV[2] qty   ARGV[3] user   ARGV[4] fingerprint   ARGV[5] capacity
-- ARGV[6] ticket_ttl_ms   ARGV[7] idem_ttl_ms   ARGV[8] ticket key prefix fg:{wl:SKU}:t:
-- ARGV[9] owner: the scope of the request's idempotency key ('' = unscoped),
--   kept in the ticket's field `owner` (only its storefront sees the ticket)
-- ARGV[10] the SKU's opens_at (ms, Redis clock), '' for a SKU without one
-- KEYS[9] fg:{wl:SKU}:draw   the fair draw's state (lua/wl_draw.lua)
--
-- The pre-queue (docs/fair-draw.md): a SKU with opens_at takes tickets
-- before it as 'prequeued' — in the queue with score 0 (counted against
-- capacity, one per buyer like any ticket) but not in the stream, so no
-- promoter sees them until the draw has ordered them. From opens_at on, until
-- the draw is applied (wl_draw's status 'drawn'), a join is refused
-- ({'drawing'}: retry): a ticket taken then would reach the stream ahead of the
-- drawn ones. Judged by this server's TIME, atomically with wl_draw's close:
-- a join is either in the closed list or refused, never lost, never both.
-- Afterwards joins are FIFO (scores from seq, >= 1) behind the drawn tickets
-- (negative scores).
-- Returns {'joined', ticket, position} | {'replay', ticket} | {'mismatch'}
--       | {'full'} | {'already', ticket} | {'drawing'}
local queue, stream, users, idem, seqkey, tkey, expz, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local ticket, qty, user, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local capacity, ttl, idem_ttl, prefix = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local owner = ARGV[9] or ''
local opens = tonumber(ARGV[10] or '')
local drawk = KEYS[9]

local seen = redis.call('GET', idem)
if seen then
  local bar = string.find(seen, '|', 1, true)
  if string.sub(seen, bar + 1) ~= fp then return {'mismatch'} end
  return {'replay', string.sub(seen, 1, bar - 1)}
end
local ts = now_ms()
local pre = false
if opens and drawk then
  local st = redis.call('HGET', drawk, 'status')
  if st ~= 'drawn' then
    if st or ts >= opens then return {'drawing'} end
    pre = true
  end
end
local buyer = wl_buyer(owner, user)
local live = redis.call('HGET', users, buyer)
if live then
  local t = redis.call('HMGET', prefix .. live, 'status', 'expires')
  if (t[1] == 'waiting' or t[1] == 'prequeued') and tonumber(t[2]) > ts then return {'already', live} end
  redis.call('HDEL', users, buyer)
end
if redis.call('ZCARD', queue) >= capacity then return {'full'} end

if pre then
  -- waits from opens_at on, like any ticket from its join
  local deadline = opens + ttl
  redis.call('HSET', tkey, 'qty', qty, 'user', user, 'status', 'prequeued', 'created', ts,
    'expires', deadline, 'attempt', 0)
  if owner ~= '' then redis.call('HSET', tkey, 'owner', owner) end
  redis.call('PEXPIRE', tkey, deadline - ts + idem_ttl)
  redis.call('ZADD', queue, 0, ticket)
  redis.call('ZADD', expz, deadline, ticket)
  redis.call('HSET', users, buyer, ticket)
  redis.call('SET', idem, ticket .. '|' .. fp, 'PX', deadline - ts + idem_ttl)
  redis.call('SET', state, 'open')
  return {'joined', ticket, redis.call('ZCARD', queue)}
end

local seq = redis.call('INCR', seqkey)
redis.pcall('XGROUP', 'CREATE', stream, 'promoters', '0', 'MKSTREAM')
local entry = redis.call('XADD', stream, '*', 'ticket', ticket)
redis.call('HSET', tkey, 'qty', qty, 'user', user, 'status', 'waiting', 'created', ts,
  'expires', ts + ttl, 'seq', seq, 'entry', entry, 'attempt', 0)
if owner ~= '' then redis.call('HSET', tkey, 'owner', owner) end
redis.call('PEXPIRE', tkey, ttl + idem_ttl)
redis.call('ZADD', queue, seq, ticket)
redis.call('ZADD', expz, ts + ttl, ticket)
redis.call('HSET', users, buyer, ticket)
redis.call('SET', idem, ticket .. '|' .. fp, 'PX', idem_ttl)
redis.call('SET', state, 'open')
return {'joined', ticket, redis.call('ZRANK', queue, ticket) + 1}
