-- transfer_out: first half of moving units between two shards of one SKU (so
-- a request for qty > 1 never meets a false "sold out" while the SKU as a
-- whole has qty units). Takes up to `want` units from this (donor) shard and
-- records the transfer as pending in the donor's own slot; transfer_in adds
-- them to the recipient. A crash between the halves leaves the pending record,
-- which the sweeper completes (transfer_in is idempotent per transfer id), so
-- no unit is lost. A completed transfer leaves a completion mark (transfer_done.lua):
-- a resend of this call that arrives after the transfer was completed — by
-- its mover, or by the sweeper's recovery while the resend was still on its
-- way — takes nothing (answers 0), instead of taking the units again.
--
-- KEYS[1] fg:{SKU#d}:stock   KEYS[2] fg:{SKU#d}:books   KEYS[3] fg:{SKU#d}:xfers
-- KEYS[4] fg:{SKU#d}:events  KEYS[5] fg:{SKU#d}:xdone (completed transfers)
-- ARGV[1] transfer id   ARGV[2] recipient shard index   ARGV[3] want
-- Returns the number of units taken (0..want).
local stock, books, xfers, events, xdone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local xid, to, want = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pending = redis.call('HGET', xfers, xid)
if pending then   -- a retried call: the first run already took the units
  local a = string.find(pending, '|', 1, true)
  local b = string.find(pending, '|', a + 1, true)
  return tonumber(string.sub(pending, a + 1, b - 1))
end
if redis.call('ZSCORE', xdone, xid) then return 0 end   -- completed already
local available = tonumber(redis.call('GET', stock) or '0')
local n = math.min(available, want)
if n <= 0 then return 0 end
local ts = now_ms()
redis.call('DECRBY', stock, n)
redis.call('HINCRBY', books, 'xout', n)
redis.call('HSET', xfers, xid, to .. '|' .. n .. '|' .. ts)
emit(events, 'xfer_out', xid, n, to, ts)
return n
