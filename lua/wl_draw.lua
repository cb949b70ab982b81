-- wl_draw: the fair draw of a SKU's pre-queue, in two steps around the order
-- the service computes (HMAC-SHA256, src/fairness.rs; Redis's Lua has no
-- HMAC). docs/fair-draw.md has the rule; this script keeps it exactly once.
--
-- KEYS[1] fg:{wl:SKU}:queue   KEYS[2] fg:{wl:SKU}:stream   KEYS[3] fg:{wl:SKU}:draw
-- ARGV[1] op:
--   'close' ARGV[2] opens_at ms: from opens_at on (this server's TIME), freeze
--     the pre-queue: every ticket still pre-queued (score 0 in the queue) is
--     written to the draw's `tickets` (joined by '\n'), status 'closed'. Atomic
--     with wl_join (same slot), which refuses joins from opens_at until the draw
--     is applied, so a join is in this list or refused, never both, never lost.
--     Idempotent: once closed, the stored list is answered again. The opens_at
--     it closed for is kept in the draw's `opens_at`.
--     Returns {'early', ms_left} | {status, tickets, closed_at}
--   'apply' ARGV[2] first index (0-based) ARGV[3] total ARGV[4] ticket key
--     prefix fg:{wl:SKU}:t:   ARGV[5] digest   ARGV[6] seed (hex)   ARGV[7..] the
--     tickets from that index on, in draw order (a chunk: the service sends
--     at most 1,000 per call, so Redis is never blocked by one long script).
--     Each ticket still 'prequeued' becomes 'waiting': score (index - total),
--     negative, ahead of every FIFO join (seq >= 1); one stream entry each, in
--     order. `applied` counts the tickets done: a chunk not starting there
--     is answered {'at', applied} and changes nothing (a second drawer, or a
--     retry after a crash, resumes where the first left off). The last chunk
--     sets status 'drawn' and reveals the seed and the digest.
--     Returns {'applied', applied} | {'at', applied} | {'drawn'} | {'unclosed'}
local queue, stream, drawk = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]

if op == 'close' then
  local d = redis.call('HMGET', drawk, 'status', 'tickets', 'closed_at')
  if d[1] then return {d[1], d[2] or '', d[3] or '0'} end
  local ts = now_ms()
  local opens = tonumber(ARGV[2])
  if ts < opens then return {'early', opens - ts} end
  local tickets = redis.call('ZRANGEBYSCORE', queue, 0, 0)
  local list = table.concat(tickets, '\n')
  -- opens_at as the closer knew it: the draw document shows this one from
  -- now on, the same on every instance whatever its meta cache holds
  redis.call('HSET', drawk, 'status', 'closed', 'tickets', list, 'count', #tickets,
    'closed_at', ts, 'applied', 0, 'opens_at', ARGV[2])
  return {'closed', list, ts}
elseif op == 'apply' then
  local d = redis.call('HMGET', drawk, 'status', 'applied', 'count')
  if d[1] == 'drawn' then return {'drawn'} end
  if d[1] ~= 'closed' then return {'unclosed'} end
  local first, total, prefix = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local applied = tonumber(d[2])
  if first ~= applied or total ~= tonumber(d[3]) then return {'at', applied} end
  local n = #ARGV - 6
  if n > 0 then redis.pcall('XGROUP', 'CREATE', stream, 'promoters', '0', 'MKSTREAM') end
  for i = 1, n do
    local ticket = ARGV[6 + i]
    local tkey = prefix .. ticket
    if redis.call('HGET', tkey, 'status') == 'prequeued' then
      local entry = redis.call('XADD', stream, '*', 'ticket', ticket)
      redis.call('HSET', tkey, 'status', 'waiting', 'entry', entry, 'seq', first + i - 1 - total)
      redis.call('ZADD', queue, 'XX', first + i - 1 - total, ticket)
    end
  end
  applied = applied + n
  if applied >= total then
    redis.call('HSET', drawk, 'status', 'drawn', 'applied', applied, 'digest', ARGV[5],
      'seed', ARGV[6], 'drawn_at', now_ms())
    return {'drawn'}
  end
  redis.call('HSET', drawk, 'applied', applied)
  return {'applied', applied}
end
return redis.error_reply('unknown op')
