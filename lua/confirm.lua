-- confirm: a held, unexpired reservation becomes sold. Idempotent.
--
-- KEYS[1] fg:{SKU#s}:r:<rid>   KEYS[2] fg:{SKU#s}:stock   KEYS[3] fg:{SKU#s}:books
-- KEYS[4] fg:{SKU#s}:holds     KEYS[5] fg:{SKU#s}:events   KEYS[6] fg:{SKU#s}:keys
-- ARGV[1] rid   ARGV[2] the caller's scope ('*' = any; lib.lua's rec_visible)
-- Returns {code, status, qty, user, expires_at_ms, idempotency key, returned}; code is
--   'ok'        the reservation is confirmed (now, or already before)
--   'conflict'  it ended otherwise (status 'released' or 'expired')
--   'missing'   no such reservation, or another storefront's (nothing changes;
--               the reply is just {'missing'})
-- returned: the units this call gave back to stock — qty only when it
-- expired the hold itself (below), else 0: a sale returns nothing, so a
-- confirm never lifts the service's sold-out mark otherwise.
-- A confirm that arrives after the deadline loses to expiry even if the sweeper
-- has not run yet: it expires the hold itself (units back to stock) and
-- answers 'conflict'/'expired'. Deadline and confirm share the server clock.
local rkey, stock, books, holds, events, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rid, scope = ARGV[1], ARGV[2]
local r = rec_load(rkey)
if not r or not rec_visible(r, scope) then return {'missing'} end
local status, qty, user, exp, idem = r.status, tonumber(r.qty), r.user, r.exp, r.idem
if status == 'held' then
  local ts = now_ms()
  if ts >= tonumber(exp) then
    end_hold(rkey, r, stock, books, holds, events, reserved, rid, 'expired', ts)
    return {'conflict', 'expired', qty, user, exp, idem, qty}
  end
  if qty ~= 1 then redis.call('HDEL', live_of(holds), rid) end   -- first: see lib.lua's end_hold
  redis.call('HINCRBY', books, 'held', -qty)
  redis.call('HINCRBY', books, 'sold', qty)
  r.status, r.ended = 'confirmed', string.format('%d', ts)
  rec_save(rkey, r)
  redis.call('ZREM', holds, rid)
  emit(events, 'confirmed', rid, qty, user, ts)
  return {'ok', 'confirmed', qty, user, exp, idem, 0}
end
if status == 'confirmed' then return {'ok', status, qty, user, exp, idem, 0} end
return {'conflict', status, qty, user, exp, idem, 0}
