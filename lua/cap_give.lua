-- cap_give: uncount a reservation from the buyer's purchase cap (it was
-- released or expired, or the reserve it was taken for failed). Idempotent:
-- a second call for the same key gives nothing back.
--
-- KEYS[1] fg:{cap:SKU:<user>}
-- ARGV[1] idempotency key
-- Returns the units given back (0 if the key was not counted).
local cap, field = KEYS[1], 'k:' .. ARGV[1]
local qty = tonumber(redis.call('HGET', cap, field))
if not qty then return 0 end
redis.call('HDEL', cap, field)
local left = redis.call('HINCRBY', cap, 'total', -qty)
if left <= 0 then redis.call('HDEL', cap, 'total') end
return qty
