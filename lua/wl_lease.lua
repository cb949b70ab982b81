-- wl_lease: one promoter per SKU at a time (so promotion follows arrival
-- order), taken or renewed by its holder. A promoter that dies simply stops
-- renewing; another takes over after the lease runs out and claims what the
-- dead one left pending. Correctness does not rest on the lease: promotion is
-- idempotent per ticket attempt (see src/inventory/waitlist.rs).
--
-- KEYS[1] fg:{wl:SKU}:lease   ARGV[1] holder token   ARGV[2] lease_ms
-- Returns 1 held | 0 someone else holds it
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
