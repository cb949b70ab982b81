-- cart_pend: put a cart on the work list of carts in a transitional state
-- (pending, compensating, confirming, releasing) that the sweeper finishes
-- when their deadline passes (src/inventory/cart.rs, docs/carts.md).
-- Bounded: a cart new to the list is refused while it holds `max` entries
-- (the service answers 503 carts_busy; nothing was reserved yet).
--
-- KEYS[1] fg:{carts~X}:pending (zset: cart id -> deadline, server ms; X the id's
--         first hex digit, one of 16 buckets)
-- ARGV[1] cart id   ARGV[2] deadline (server ms)   ARGV[3] max entries of the bucket
--
-- Returns 1 (on the list, its deadline now ARGV[2]) or 0 (the list is full).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and
   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
