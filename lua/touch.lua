-- touch: the write a batch of replica acknowledgements waits behind
-- (src/inventory/durability.rs). For each reservation record KEYS[i] (all of
-- one shard, one slot), PEXPIRE it by ARGV[1] ms — its garbage-collection TTL,
-- the same reserve.lua gave it — and answer 1 if it exists, 0 if it is gone
-- (a failover lost the hold). The caller then sends WAIT on the same
-- connection: the replicas that have this write have every hold before it.
--
-- Idempotent: a second run sets the same TTL again.
-- A record that rides in its key's claim (one server, data layout 6:
-- lib.lua's rec_load finds it) is touched there.
local out = {}
for i, key in ipairs(KEYS) do
  -- (on Redis Cluster nothing rides: the record is the key, touched unread)
  local r = CLAIM_RECORDS and rec_load(key)
  if r and r.at then
    out[i] = redis.call('PEXPIRE', r.at, ARGV[1])
  else
    out[i] = redis.call('PEXPIRE', key, ARGV[1])
  end
end
return out
