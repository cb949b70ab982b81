-- release: a held reservation ends and its units go back to stock. Idempotent.
--
-- KEYS[1] fg:{SKU#s}:r:<rid>   KEYS[2] fg:{SKU#s}:stock   KEYS[3] fg:{SKU#s}:books
-- KEYS[4] fg:{SKU#s}:holds     KEYS[5] fg:{SKU#s}:events
-- ARGV[1] rid
-- Returns {code, status, qty, user, expires_at_ms, idempotency key}; code is
--   'ok'        released (now, or already before)
--   'conflict'  it ended otherwise ('confirmed' or 'expired')
--   'missing'   no such reservation
-- A release after the deadline records the truth: the hold expired (units go
-- back to stock either way, exactly once).
local rkey, stock, books, holds, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local r = redis.call('HMGET', rkey, 'status', 'qty', 'user', 'exp', 'idem')
local status, qty, user, exp, idem = r[1], tonumber(r[2]), r[3], r[4], r[5] or ''
if not status then return {'missing'} end
if status == 'held' then
  local ts = now_ms()
  if ts >= tonumber(exp) then
    end_hold(rkey, stock, books, holds, events, rid, qty, user, 'expired', ts)
    return {'conflict', 'expired', qty, user, exp, idem}
  end
  end_hold(rkey, stock, books, holds, events, rid, qty, user, 'released', ts)
  return {'ok', 'released', qty, user, exp, idem}
end
if status == 'released' then return {'ok', status, qty, user, exp, idem} end
return {'conflict', status, qty, user, exp, idem}
