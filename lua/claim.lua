-- claim: the first request with an idempotency key fixes the key's request
-- body, across SKUs too — SET NX GET — for a batch of keys of one bucket
-- (src/inventory/batch.rs), one after the other in arrival order.
--
-- KEYS[i] fg:{claim~H}:<16 hex> (the key's claim, named by a keyed hash of the
--   key, src/inventory/keys.rs; H: its bucket, which all keys of one call share)
-- ARGV[1] ttl_ms   ARGV[1 + i] the body of the request with key i (`<sku>\n<fingerprint>`)
--
-- Returns one reply per key: nil when this call created the claim (so no
-- shard can hold a verdict for the key yet: the walk sends reserve.lua the
-- claim body `!`), else the earlier body (this very body: a retry, or this
-- call resent; the caller reads it as "same request"; another: refused).
-- Loaded without lua/lib.lua's prelude (src/inventory/scripts.rs): it uses
-- none of it.
-- Idempotent: a resent call answers every key with its own body, which the
-- caller reads as "same request" (and so not as new: its walk reads the
-- verdicts, src/inventory/reserve.rs).
local replies = {}
for i = 1, #KEYS do
  replies[i] = redis.call('SET', KEYS[i], ARGV[1 + i], 'NX', 'GET', 'PX', ARGV[1])
end
return replies
