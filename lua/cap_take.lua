-- cap_take: count a reservation against the buyer's purchase cap for a SKU,
-- before the reserve script runs. The cap lives in its own slot (one key per
-- SKU and buyer), so it holds across shards and across flashgate instances.
-- Counted per idempotency key, so a retry or replay of one reservation is
-- never counted twice; cap_give uncounts it when the hold ends without a sale.
-- Order of operations (take, reserve, give back on a definite failure) errs on
-- the safe side: a crash in between leaves the buyer capped too tightly,
-- never too loosely.
--
-- KEYS[1] fg:{cap:SKU:<user>}   hash: total, and k:<idempotency key> -> qty
-- ARGV[1] idempotency key   ARGV[2] qty   ARGV[3] max per user   ARGV[4] ttl_ms
-- Returns 1 counted now | 2 already counted for this key | 0 over the cap
local cap, field = KEYS[1], 'k:' .. ARGV[1]
local qty, max, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', cap, field) == 1 then return 2 end
local total = tonumber(redis.call('HGET', cap, 'total') or '0')
if total + qty > max then return 0 end
redis.call('HINCRBY', cap, 'total', qty)
redis.call('HSET', cap, field, qty)
redis.call('PEXPIRE', cap, ttl)
return 1
