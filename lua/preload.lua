-- preload: ops set the units a shard has for sale before the sale starts.
--
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:events
-- ARGV[1] units available on this shard: a decimal integer within
--         0..=1000000000000 (src/inventory/mod.rs MAX_STOCK)
-- ARGV[2] force: 0 | 1 | 2 (new: a shard no meta names yet, so never served;
--         what an earlier, failed preload left on it is deleted first)
-- Returns {'ok', units} | {'exists', stock}; an error, having written nothing,
-- for units out of bounds or a stock key that does not hold a counter.
-- The outbox event is `preload` with qty the change of available units and
-- rid 'load' for a first load of the shard (it had no counters: a new SKU, a
-- Redis that lost it, or a shard an earlier failed preload left half-made)
-- or 'change' for a forced change. Reconcile takes a shard's last 'load' as
-- its initial stock, so a reload after a wipe never counts the stock twice on
-- the ledger.
-- Without force, a shard that already has counters is left alone, so a typo
-- cannot wipe a running sale. With force, `stock` becomes ARGV[1] and `initial`
-- moves by the same delta: holds and sales already made stay on the books.
--
-- Bounds: a Lua number handed back to Redis is formatted with %.14g, exact
-- only below 10^14 ("1e+17" would be stored, and every later INCRBY on the
-- key fails). The service refuses bigger numbers at its edge; this script
-- refuses them again (defence in depth), before its first write.
local MAX_UNITS = 1000000000000
local function counter(v)
  if type(v) ~= 'string' or not string.match(v, '^%d+$') or #v > 13 then return nil end
  local n = tonumber(v)
  if n > MAX_UNITS then return nil end
  return n
end
local stock, books, events = KEYS[1], KEYS[2], KEYS[3]
local units, force = counter(ARGV[1]), ARGV[2] == '1'
if not units then
  return redis.error_reply('units must be an integer within 0..=' .. MAX_UNITS)
end
if ARGV[2] == '2' then
  redis.call('DEL', stock, books, events)
end
local raw = redis.call('GET', stock)
local ts = now_ms()
if raw then
  if not force then return {'exists', tonumber(raw) or 0} end
  -- moved by sales and transfers, a shard's stock may exceed what one
  -- preload may set, but never 10^13
  local old = string.match(raw, '^%d+$') and #raw <= 13 and tonumber(raw)
  if not old then
    return redis.error_reply('stock key ' .. stock .. ' holds ' .. raw .. ', not a counter')
  end
  redis.call('SET', stock, units)
  redis.call('HINCRBY', books, 'initial', units - old)
  emit(events, 'preload', 'change', units - old, '', ts)
  return {'ok', units}
end
redis.call('SET', stock, units)
redis.call('HSET', books, 'initial', units, 'held', 0, 'sold', 0, 'xin', 0, 'xout', 0)
emit(events, 'preload', 'load', units, '', ts)
return {'ok', units}
