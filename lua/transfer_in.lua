-- transfer_in: second half of a transfer (see transfer_out.lua). Adds the
-- units to this (recipient) shard once per transfer id.
--
-- KEYS[1] fg:{SKU#r}:stock   KEYS[2] fg:{SKU#r}:books   KEYS[3] fg:{SKU#r}:xin
-- KEYS[4] fg:{SKU#r}:events
-- ARGV[1] transfer id   ARGV[2] units   ARGV[3] donor shard index
-- ARGV[4] keep_ms: how long applied ids are kept (the idempotency retention;
--         the sweeper leaves a pending transfer older than that to an
--         operator rather than apply it without knowing, src/inventory/mod.rs)
-- Returns the units added now (0 if this transfer id was already applied).
local stock, books, done, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local xid, n, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]) or 86400000
if redis.call('ZSCORE', done, xid) then return 0 end
local ts = now_ms()
redis.call('INCRBY', stock, n)
redis.call('HINCRBY', books, 'xin', n)
redis.call('ZADD', done, ts, xid)
redis.call('ZREMRANGEBYSCORE', done, '-inf', ts - keep)
emit(events, 'xfer_in', xid, n, ARGV[3], ts)
return n
