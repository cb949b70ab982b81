-- preload: ops set the units a shard has for sale before the sale starts.
--
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:events
-- ARGV[1] units available on this shard   ARGV[2] force (1|0)
-- Returns {'ok', units} | {'exists', stock}
-- The outbox event is `preload` with qty the change of available units and
-- rid 'load' for a first load of the shard (it had no counters: a new SKU, or
-- a Redis that lost it) or 'change' for a forced change. Reconcile takes a
-- shard's last 'load' as its initial stock, so a reload after a wipe never
-- counts the stock twice on the ledger.
-- Without force, a shard that already has counters is left alone, so a typo
-- cannot wipe a running sale. With force, `stock` becomes ARGV[1] and `initial`
-- moves by the same delta: holds and sales already made stay on the books.
local stock, books, events = KEYS[1], KEYS[2], KEYS[3]
local units, force = tonumber(ARGV[1]), ARGV[2] == '1'
if units < 0 then return redis.error_reply('units must be >= 0') end
local old = tonumber(redis.call('GET', stock))
local ts = now_ms()
if old then
  if not force then return {'exists', old} end
  redis.call('SET', stock, units)
  redis.call('HINCRBY', books, 'initial', units - old)
  emit(events, 'preload', 'change', units - old, '', ts)
  return {'ok', units}
end
redis.call('SET', stock, units)
redis.call('HSET', books, 'initial', units, 'held', 0, 'sold', 0, 'xin', 0, 'xout', 0)
emit(events, 'preload', 'load', units, '', ts)
return {'ok', units}
