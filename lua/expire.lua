-- expire: the sweeper's step for one shard. Returns due holds to stock, each
-- exactly once: only a record still 'held' and past its deadline is ended, in
-- the same step that takes it off the work list. Running it twice, or from two
-- flashgate instances at once, changes nothing the second time.
--
-- Why a sorted set and not key TTLs: keyspace notifications for expired keys
-- are fire-and-forget (lost while no subscriber listens, delayed under load),
-- so a hold could be lost for ever. The sorted set is the durable work list.
--
-- KEYS[1] fg:{SKU#s}:holds   KEYS[2] fg:{SKU#s}:stock   KEYS[3] fg:{SKU#s}:books
-- KEYS[4] fg:{SKU#s}:events  KEYS[5] fg:{SKU#s}:keys (an expired hold's key leaves it)
-- ARGV[1] record key prefix fg:{SKU#s}:r:   ARGV[2] batch limit
-- Returns {expired_count, lateness_ms_of_oldest, units_returned, user1, key1, user2, key2, ...}
-- (buyer and idempotency key of each expired hold, to free purchase caps)
local holds, stock, books, events, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, limit = ARGV[1], tonumber(ARGV[2])
local ts = now_ms()
local due = redis.call('ZRANGEBYSCORE', holds, '-inf', ts, 'WITHSCORES', 'LIMIT', 0, limit)
local count, units, lateness = 0, 0, 0
local ended = {}
-- Every due record is read before anything is written. While the shard's
-- slot is half-moved to another master, a record already moved ends the
-- script ("non local key", resent by src/inventory/scripts.rs) — with
-- nothing changed, so the resend finds every hold still due and names
-- every buyer (the caps the service gives back), instead of losing the
-- names of holds ended before that record.
local recs = {}
for i = 1, #due, 2 do recs[i] = rec_load(prefix .. due[i]) end
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
    ended[#ended + 1] = r.user
    ended[#ended + 1] = r.idem
  elseif status == 'held' and exp then
    redis.call('ZADD', holds, exp, rid)   -- stale score: put it back at its deadline
  else
    redis.call('ZREM', holds, rid)        -- ended elsewhere (or record gone)
  end
end
local reply = {count, lateness, units}
for i = 1, #ended do reply[#reply + 1] = ended[i] end
return reply
