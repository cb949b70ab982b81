-- reserve: check-and-DECRBY on one shard, create the hold, record the
-- idempotency key — one atomic step, for a batch of requests that arrived
-- together for this shard (src/inventory/batch.rs), decided one after the
-- other in arrival order. A batch of one is the plain case.
--
-- Shard keys (all with the shard's hash tag):
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:holds
-- KEYS[4] fg:{SKU#s}:events  KEYS[5] fg:{SKU#s}:wlopen (the waitlist gate)
-- KEYS[6] fg:{SKU#s}:keys: the idempotency keys of every reservation made here
--   (the sold-out fast path loads it, so a retry of a key that got a unit is
--   replayed, not refused from memory; bounded by the shard's units)
-- then per request i = 1..n: KEYS[4+3i] fg:{SKU#s}:idem:<key>, KEYS[5+3i] fg:{SKU#s}:r:<rid>,
--   KEYS[6+3i] the key's claim record fg:{idem~NN}:<key> (see claim below)
--
-- ARGV[1] hold_ms   ARGV[2] idem_ttl_ms   ARGV[3] record_ttl_ms (garbage
-- collection of the record, never stock return)   ARGV[4] sku
-- then per request i, 8 values from ARGV[5 + 8(i-1)]:
--   rid (fresh, used only if a hold is created), qty, user, request fingerprint,
--   mark_moved (1 = on "dry", write the `moved` tombstone; 0 = leave no trace),
--   gate (1 = refuse while the SKU's waitlist has waiters: units coming back
--   belong to them, see src/inventory/waitlist.rs; 0 = the waitlist promoter),
--   idempotency key, claim body
--
-- The claim (one Redis server only, where a script may touch keys of any
-- slot): a non-empty claim body makes this request first do what claim.lua
-- does for its key — SET NX GET of the claim record — and stop with
-- {'claimed', earlier} when the record holds another body, before anything
-- of the shard is read or changed. It saves the separate claim.lua round
-- trip of the walk's first step (src/inventory/mod.rs). An empty body skips
-- it (the claim was made apart, as on Redis Cluster, or a later step of the
-- walk); KEYS[6+3i] is then the idem key again, so every key stays in the
-- shard's slot.
--
-- Returns one reply per request, in order, each one of
--   {'held', rid, expires_at_ms}                  a new hold was created
--   {'claimed', earlier_body}                     the key's claim holds another request body
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
-- this script (a client retry of an in-flight command), or a second request
-- with the key later in the same batch, returns 'replay'.
--
-- Cost: each request pays GET idem (and SET NX GET of its claim, if any)
-- and, when it gets a unit, HSET + PEXPIRE of its record, SET of its key and
-- the XADD of its event; the stock, books, expiry list and key set change
-- once per batch. Numbers go to Redis as the strings they came in (or
-- formatted once per batch with %d): Redis formats a Lua number argument
-- with %.17g, a measurable share of the script's time.
local stock, books, holds, events, wlopen, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local hold_ms, idem_ttl, record_ttl, sku = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]

local ts, exp, ts_s, exp_s -- one clock reading per batch, taken at the first hold
local gate_open                -- EXISTS wlopen, read at most once per batch
local available                -- the shard's stock as this batch has left it
local taken = 0                -- units held by this batch: one DECRBY/HINCRBY at the end
local zadd, won = {}, {}       -- one ZADD and one SADD at the end

local function one(idem, rkey, ckey, rid, qty_s, user, fp, mark_moved, gate, key, claim)
  if claim ~= '' then
    local earlier = redis.call('SET', ckey, claim, 'NX', 'GET', 'PX', idem_ttl)
    if earlier and earlier ~= claim then return {'claimed', earlier} end
  end
  local qty = tonumber(qty_s)
  if gate and gate_open == nil then gate_open = redis.call('EXISTS', wlopen) == 1 end
  local gated = gate and gate_open
  if available == nil then available = tonumber(redis.call('GET', stock)) or false end

  local seen = redis.call('GET', idem)
  if seen then
    local kind = string.sub(seen, 1, 1)
    if kind == 'M' then
      if string.sub(seen, 3) ~= fp then return {'mismatch'} end
      if gated then return {'moved', 0} end
      return {'moved', available or 0}
    end
    -- 'R|<rid>|<fp>' (rids never contain '|')
    local bar = string.find(seen, '|', 3, true)
    local old = string.sub(seen, 3, bar - 1)
    if string.sub(seen, bar + 1) ~= fp then return {'mismatch'} end
    local r = redis.call('HMGET', string.sub(rkey, 1, #rkey - #rid) .. old, 'qty', 'user', 'first_exp')
    return {'replay', old, r[1] or '', r[2] or '', r[3] or ''}
  end

  if not available then return {'unloaded'} end
  local here = available
  if gated then here = 0 end
  if here < qty then
    if mark_moved then
      redis.call('SET', idem, 'M|' .. fp, 'PX', idem_ttl)
    end
    return {'dry', here}
  end

  if not ts then
    ts = now_ms()
    exp = ts + hold_ms
    ts_s, exp_s = string.format('%d', ts), string.format('%d', exp)
  end
  available = available - qty
  taken = taken + qty
  redis.call('HSET', rkey, 'sku', sku, 'qty', qty_s, 'user', user, 'status', 'held',
    'created', ts_s, 'exp', exp_s, 'first_exp', exp_s, 'idem', key)
  redis.call('PEXPIRE', rkey, record_ttl)
  redis.call('SET', idem, 'R|' .. rid .. '|' .. fp, 'PX', idem_ttl)
  zadd[#zadd + 1] = exp_s
  zadd[#zadd + 1] = rid
  won[#won + 1] = key
  emit(events, 'held', rid, qty_s, user, ts_s)
  return {'held', rid, exp}
end

local replies = {}
local n = (#KEYS - 6) / 3
for i = 1, n do
  local a = 4 + 8 * (i - 1)
  replies[i] = one(KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], ARGV[a + 5] == '1', ARGV[a + 6] == '1', ARGV[a + 7], ARGV[a + 8])
end
if taken > 0 then
  redis.call('DECRBY', stock, taken)
  redis.call('HINCRBY', books, 'held', taken)
  redis.call('ZADD', holds, unpack(zadd))
  redis.call('SADD', reserved, unpack(won))
  redis.call('PEXPIRE', reserved, record_ttl)
end
return replies
