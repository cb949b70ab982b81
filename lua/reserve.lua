-- reserve: check-and-DECRBY on one shard, create the hold, record the
-- idempotency key — one atomic step.
--
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:holds
-- KEYS[4] fg:{SKU#s}:idem:<key>   KEYS[5] fg:{SKU#s}:events   KEYS[6] fg:{SKU#s}:r:<rid>
-- ARGV[1] rid (fresh, used only if a hold is created)   ARGV[2] qty   ARGV[3] user
-- ARGV[4] request fingerprint   ARGV[5] hold_ms   ARGV[6] idem_ttl_ms
-- ARGV[7] mark_moved: 1 = on "dry", write the `moved` tombstone; 0 = leave no trace
-- ARGV[8] record_ttl_ms (garbage collection of the record, never stock return)
-- ARGV[9] sku   ARGV[10] idempotency key
-- KEYS[7] fg:{SKU#s}:wlopen   ARGV[11] gate: 1 = refuse while the SKU's waitlist has
--   waiters (units coming back belong to them; see src/inventory/waitlist.rs),
--   0 = the waitlist promoter itself
-- KEYS[8] fg:{SKU#s}:keys: the idempotency keys of every reservation made here
--   (the sold-out fast path loads it, so a retry of a key that got a unit is
--   replayed, not refused from memory; bounded by the shard's units)
--
-- Returns one of
--   {'held', rid, expires_at_ms}                  a new hold was created
--   {'replay', rid, qty, user, expires_at_ms}     this key already holds a reservation here
--   {'moved', available}                          this key was refused here before: walk on
--   {'mismatch'}                                  this key was used with another request body
--   {'dry', available}                            not enough stock here
--   {'unloaded'}                                  the shard has no counters (SKU not preloaded)
--
-- Idempotency: the verdict of a shard for a key is sticky (a reservation or the
-- `moved` tombstone), written in the same step that decides it. Every request
-- with one key visits the shards in one fixed order, so all of them see the
-- same verdicts and at most one reservation can exist per key. A second run of
-- this script (a client retry of an in-flight command) returns 'replay'.
local stock, books, holds, idem, events, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local gated = ARGV[11] == '1' and redis.call('EXISTS', KEYS[7]) == 1
local rid, qty, user, fp = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local hold_ms, idem_ttl, mark_moved, record_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1', tonumber(ARGV[8])

local seen = redis.call('GET', idem)
if seen then
  local kind = string.sub(seen, 1, 1)
  if kind == 'M' then
    if string.sub(seen, 3) ~= fp then return {'mismatch'} end
    if gated then return {'moved', 0} end
    return {'moved', tonumber(redis.call('GET', stock) or '0')}
  end
  -- 'R|<rid>|<fp>' (rids never contain '|')
  local bar = string.find(seen, '|', 3, true)
  local old = string.sub(seen, 3, bar - 1)
  if string.sub(seen, bar + 1) ~= fp then return {'mismatch'} end
  local r = redis.call('HMGET', string.sub(rkey, 1, #rkey - #rid) .. old, 'qty', 'user', 'first_exp')
  return {'replay', old, r[1] or '', r[2] or '', r[3] or ''}
end

local available = tonumber(redis.call('GET', stock))
if not available then return {'unloaded'} end
if gated then available = 0 end
if available < qty then
  if mark_moved then
    redis.call('SET', idem, 'M|' .. fp, 'PX', idem_ttl)
  end
  return {'dry', available}
end

local ts = now_ms()
local exp = ts + hold_ms
redis.call('DECRBY', stock, qty)
redis.call('HINCRBY', books, 'held', qty)
redis.call('HSET', rkey, 'sku', ARGV[9], 'qty', qty, 'user', user, 'status', 'held',
  'created', ts, 'exp', exp, 'first_exp', exp, 'idem', ARGV[10])
redis.call('PEXPIRE', rkey, record_ttl)
redis.call('ZADD', holds, exp, rid)
redis.call('SET', idem, 'R|' .. rid .. '|' .. fp, 'PX', idem_ttl)
redis.call('SADD', KEYS[8], ARGV[10])
redis.call('PEXPIRE', KEYS[8], record_ttl)
emit(events, 'held', rid, qty, user, ts)
return {'held', rid, exp}
