-- extend: the storefront starts payment, so the hold must not expire under it.
-- The deadline moves to max(deadline, now + grace), never past created + max_total.
--
-- KEYS[1] fg:{SKU#s}:r:<rid>   KEYS[2] fg:{SKU#s}:holds
-- ARGV[1] rid   ARGV[2] grace_ms   ARGV[3] max_total_ms
-- ARGV[4] the caller's scope ('*' = any; lib.lua's rec_visible)
-- Returns {code, status, qty, user, expires_at_ms}; code is
--   'ok'        still held; expires_at is the (possibly unchanged) new deadline
--   'conflict'  not held any more (or past its deadline: the sweeper or the next
--               confirm/release ends it; extend never revives a dead hold)
--   'missing'   no such reservation, or another storefront's (nothing changes)
local rkey, holds = KEYS[1], KEYS[2]
local rid, grace, max_total, scope = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local r = rec_load(rkey)
if not r or not rec_visible(r, scope) then return {'missing'} end
local status, qty, user, exp, created = r.status, r.qty, r.user, tonumber(r.exp), tonumber(r.created)
if status ~= 'held' then return {'conflict', status, qty, user, exp} end
local ts = now_ms()
if ts >= exp then return {'conflict', 'expired', qty, user, exp} end
local new_exp = math.min(math.max(exp, ts + grace), created + max_total)
if new_exp > exp then
  -- the deadline of the hold's first answer, which a replay of its
  -- idempotency key answers again (reserve.lua); set once, at the first move
  if r.first_exp == '' then r.first_exp = r.exp end
  r.exp = string.format('%d', new_exp)
  redis.call('ZADD', holds, 'XX', new_exp, rid)
  -- keep the record alive at least as long past its new deadline as before
  -- (where it lives: its own key, or its key's claim, lib.lua's rec_load)
  local at = r.at or rkey
  local ttl = redis.call('PTTL', at)
  if ttl > 0 then
    redis.call('SET', at, (r.head or '') .. rec_encode(r), 'PX', ttl + (new_exp - exp))
  else
    rec_save(rkey, r)
  end
end
return {'ok', 'held', qty, user, new_exp}
