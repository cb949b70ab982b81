-- fix: `flashgate reconcile --fix` on one shard. Sets the shard's Redis books
-- to the ledger's truth (src/reconcile.rs works them out from Postgres) and
-- settles reservation records whose status differs from the ledger's (still
-- held in Redis although the ledger has them ended, or ended otherwise) — one
-- atomic step, and only if nothing happened on the shard since reconcile read it.
--
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:holds
-- KEYS[4] fg:{SKU#s}:events  KEYS[5..] fg:{SKU#s}:r:<rid>, the records to settle
-- ARGV[1] the newest outbox entry id reconcile saw ('' when the stream was empty)
-- ARGV[2..7] available, held, sold, initial, xin, xout: the books to set
-- ARGV[8..] for each record KEYS[4 + i]: its rid and its ledger status
--           (confirmed | released | expired), as pairs
-- A record moved from held or confirmed to released or expired owes its
-- buyer's purchase-cap give-back: written to fg:{SKU#s}:capback (the
-- sweeper gives it back, see expire.lua); one of a SKU without a cap is
-- harmless (nothing to give back).
-- Returns {'ok', available, held, sold, initial, xin, xout}: the values before
--       | {'changed', newest id}: the shard moved since the snapshot; nothing written
--       | an error when the books to set break the invariant: nothing written
--
-- Invariant, checked before anything is written:
--   initial + xin - xout = available + held + sold, every counter >= 0.
-- The guard on the newest outbox id makes a fix computed from an old snapshot
-- harmless: every stock change appends an event, so an unchanged id means
-- unchanged books (an extend moves no units and appends none). The script
-- appends no event itself: the ledger already holds the truth it restores,
-- and reconcile writes an audit row per correction.
local stock, books, holds, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- fg:{SKU#s}:capback, named from the stock key (same slot, see reserve.lua)
local capback = string.sub(stock, 1, #stock - #'stock') .. 'capback'
local seen = ARGV[1]
local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
local now_id = ''
if newest[1] then now_id = newest[1][1] end
if now_id ~= seen then return {'changed', now_id} end

local t = {}
for i = 2, 7 do
  t[i - 1] = tonumber(ARGV[i])
  if not t[i - 1] or t[i - 1] < 0 then
    return redis.error_reply('fix: counter ' .. (i - 1) .. ' is not a count >= 0')
  end
end
local available, held, sold, initial, xin, xout = t[1], t[2], t[3], t[4], t[5], t[6]
if initial + xin - xout ~= available + held + sold then
  return redis.error_reply('fix: the books to set do not add up')
end
if (#ARGV - 7) ~= 2 * (#KEYS - 4) then
  return redis.error_reply('fix: one rid and status per record key')
end

local before = redis.call('HMGET', books, 'held', 'sold', 'initial', 'xin', 'xout')
local reply = {'ok', tonumber(redis.call('GET', stock) or '0')}
for i = 1, 5 do reply[i + 2] = tonumber(before[i] or '0') end

-- live and capback are not declared keys: touched before any write, so that
-- a half-moved slot ends the script with nothing written (see expire.lua)
redis.call('EXISTS', live_of(holds), capback)
local ts = now_ms()
for i = 5, #KEYS do
  local j = 8 + 2 * (i - 5)
  local rid, status = ARGV[j], ARGV[j + 1]
  local r = rec_load(KEYS[i])
  if r and r.status ~= status then   -- a record gone meanwhile stays gone
    -- a hold (or sale) the ledger has ended unsold owes its purchase-cap
    -- give-back: the sweeper drains capback (expire.lua)
    if (r.status == 'held' or r.status == 'confirmed') and
        (status == 'released' or status == 'expired') then
      redis.call('HSET', capback, r.user .. '\n' .. r.idem, '')
    end
    r.status, r.ended, r.fixed = status, string.format('%d', ts), 'reconcile'
    rec_save(KEYS[i], r)
  end
  redis.call('ZREM', holds, rid)
  redis.call('HDEL', live_of(holds), rid)
end

redis.call('SET', stock, available)
redis.call('HSET', books, 'held', held, 'sold', sold, 'initial', initial, 'xin', xin, 'xout', xout)
return reply
