-- wl_wait: what a waiting ticket's answer needs, in one call: the Redis
-- clock (the ticket's deadline is judged by it), the ticket's place in the
-- queue, and the SKU's recent promotion rate (lib.lua, wl_rate_read). Reads
-- only. The estimate (position / rate) is made by the caller
-- (src/inventory/waitlist.rs, `estimate_wait_seconds`).
--
-- KEYS[1] fg:{wl:SKU}:queue   KEYS[2] fg:{wl:SKU}:rate
-- ARGV[1] ticket
-- Returns {now ms, 0-based rank or -1 when not queued, tickets promoted in
--   the last WL_RATE_BUCKETS seconds, start ms of the oldest second counted (0: none)}
local ts = now_ms()
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
local count, oldest = wl_rate_read(KEYS[2], ts)
return {ts, rank or -1, count, oldest}
