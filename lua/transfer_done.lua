-- transfer_done: the end of a transfer (see transfer_out.lua), on the donor,
-- once transfer_in has applied it on the recipient. The pending record goes
-- and a completion mark takes its place, in one step, so that a resend of the
-- transfer's transfer_out (a client library retry arriving late, after the
-- sweeper's recovery completed the transfer) finds the completion mark and takes
-- nothing a second time. Completion marks are kept `keep_ms` (the idempotency
-- retention, far longer than any resend can wait), trimmed here.
--
-- KEYS[1] fg:{SKU#d}:xfers   KEYS[2] fg:{SKU#d}:xdone (zset: transfer id -> completion ms)
-- ARGV[1] transfer id   ARGV[2] keep_ms
-- Returns 1 when the pending record was removed now, 0 when it was gone already.
local xfers, xdone = KEYS[1], KEYS[2]
local xid, keep = ARGV[1], tonumber(ARGV[2])
local ts = now_ms()
redis.call('ZADD', xdone, 'NX', ts, xid)
redis.call('ZREMRANGEBYSCORE', xdone, '-inf', ts - keep)
return redis.call('HDEL', xfers, xid)
