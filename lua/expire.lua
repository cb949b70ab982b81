-- expire: the sweeper's step for one shard. Returns due holds to stock, each
-- exactly once: only a record still 'held' and past its deadline is ended, in
-- the same step that takes it off the work list. Running it twice, or from two
-- flashgate instances at once, changes nothing the second time.
--
-- A due hold whose record is gone (TTL run out while the sweeper stalled,
-- eviction) still returns its units: its qty is in fg:{SKU#s}:live, or 1
-- when it has no field there (lib.lua). (A hold made by a version before
-- `live` has no field either: it is taken for 1 unit.)
--
-- Why a sorted set and not key TTLs: keyspace notifications for expired keys
-- are fire-and-forget (lost while no subscriber listens, delayed under load),
-- so a hold could be lost for ever. The sorted set is the durable work list.
--
-- KEYS[1] fg:{SKU#s}:holds   KEYS[2] fg:{SKU#s}:stock   KEYS[3] fg:{SKU#s}:books
-- KEYS[4] fg:{SKU#s}:events  KEYS[5] fg:{SKU#s}:keys (an expired hold's key leaves it)
-- KEYS[6] fg:{SKU#s}:capback (hash: `<buyer>\n<idempotency key>` -> '')
-- ARGV[1] record key prefix fg:{SKU#s}:r:   ARGV[2] batch limit
-- ARGV[3] '1' when the SKU has a purchase cap: each expired hold's give-back
--         is written to capback in the same step that ends it
-- Returns {expired_count, lateness_ms_of_oldest, units_returned, user1, key1, user2, key2, ...}
-- the pairs: purchase-cap give-backs still owed on this shard (buyer,
-- idempotency key), this step's and any an earlier step left (about `limit`
-- of them, HSCAN). The caller gives each back (cap_give.lua, idempotent) and
-- only then HDELs its field `<buyer>\n<key>` from capback: a lost reply or a
-- failed give-back leaves it owed, and the next step names it again. (A
-- buyer never holds a newline, src/domain.rs.)
local holds, stock, books, events, reserved, capback = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local prefix, limit, caps = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local live = live_of(holds)
local ts = now_ms()
local due = redis.call('ZRANGEBYSCORE', holds, '-inf', ts, 'WITHSCORES', 'LIMIT', 0, limit)
local count, units, lateness = 0, 0, 0
-- Every due record is read before anything is written. While the shard's
-- slot is half-moved to another master, a record already moved ends the
-- script ("non local key", resent by src/inventory/scripts.rs) — with
-- nothing changed, so the resend finds every hold still due and records
-- every buyer's give-back, instead of losing the names of holds ended
-- before that record.
-- The same for `live` (not a declared key): touched here,
-- before any write.
local recs = {}
for i = 1, #due, 2 do recs[i] = rec_load(prefix .. due[i]) end
redis.call('EXISTS', live, capback)
for i = 1, #due, 2 do
  local rid = due[i]
  if i == 1 then lateness = ts - tonumber(due[i + 1]) end
  local rkey = prefix .. rid
  local r = recs[i]
  local status, qty, exp = r and r.status, r and tonumber(r.qty), r and tonumber(r.exp)
  if status == 'held' and exp and ts >= exp then
    end_hold(rkey, r, stock, books, holds, events, reserved, rid, 'expired', ts)
    count = count + 1
    units = units + qty
    if caps then redis.call('HSET', capback, r.user .. '\n' .. r.idem, '') end
  elseif status == 'held' and exp then
    redis.call('ZADD', holds, exp, rid)   -- stale score: put it back at its deadline
  elseif r then
    redis.call('ZREM', holds, rid)        -- ended elsewhere
    redis.call('HDEL', live, rid)
  else
    -- The record is gone (its TTL ran out while the sweeper stalled, or it
    -- was evicted) but the hold never ended: its units are still in `held`.
    -- Its qty is in `live` (no field: 1 unit): they come back to stock,
    -- exactly once (the rid leaves the list in the same step). The buyer
    -- is unknown: no cap give-back.
    local q = tonumber(redis.call('HGET', live, rid)) or 1
    redis.call('INCRBY', stock, q)
    redis.call('HINCRBY', books, 'held', -q)
    redis.call('HDEL', live, rid)
    emit(events, 'expired', rid, q, '', ts)
    count = count + 1
    units = units + q
    redis.call('ZREM', holds, rid)
  end
end
local reply = {count, lateness, units}
local owed = redis.call('HSCAN', capback, 0, 'COUNT', limit)[2]
for i = 1, #owed, 2 do
  local f = owed[i]
  local nl = string.find(f, '\n', 1, true)
  if nl then
    reply[#reply + 1] = string.sub(f, 1, nl - 1)
    reply[#reply + 1] = string.sub(f, nl + 1)
  end
end
return reply
