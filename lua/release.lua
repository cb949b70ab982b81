-- release: a held reservation ends and its units go back to stock. Idempotent.
--
-- KEYS[1] fg:{SKU#s}:r:<rid>   KEYS[2] fg:{SKU#s}:stock   KEYS[3] fg:{SKU#s}:books
-- KEYS[4] fg:{SKU#s}:holds     KEYS[5] fg:{SKU#s}:events   KEYS[6] fg:{SKU#s}:keys
-- ARGV[1] rid   ARGV[2] the caller's scope ('*' = any; lib.lua's rec_visible)
-- Returns {code, status, qty, user, expires_at_ms, idempotency key, returned}; code is
--   'ok'        released (now, or already before)
--   'conflict'  it ended otherwise ('confirmed' or 'expired')
--   'missing'   no such reservation, or another storefront's (nothing changes;
--               the reply is just {'missing'})
-- returned: the units this call gave back to stock — qty when it ended the
-- hold, 0 when the hold had ended before (a no-op). Only a call that
-- returned units may lift the service's sold-out mark: a client looping
-- no-op releases must not switch the sold-out shield off.
-- A release after the deadline records the truth: the hold expired (units go
-- back to stock either way, exactly once).
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
  end_hold(rkey, r, stock, books, holds, events, reserved, rid, 'released', ts)
  return {'ok', 'released', qty, user, exp, idem, qty}
end
if status == 'released' then return {'ok', status, qty, user, exp, idem, 0} end
return {'conflict', status, qty, user, exp, idem, 0}
