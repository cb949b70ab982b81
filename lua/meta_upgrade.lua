-- meta_upgrade: a SKU's meta in this version's data layout, converting one
-- an earlier version wrote. Idempotent.
--
-- Why (rolling upgrades): this version writes data an earlier one would
-- misread — storefront-scoped idempotency keys, claims that carry the shard
-- count the key first walked, the `live` and `capback` hashes, transfer
-- completion marks. An earlier version reads a SKU's shard count from the meta's
-- field `shards` and nothing else: once that field is gone, it answers the SKU
-- as unknown (404) to every reserve, confirm, release and extend, and its
-- sweeper and promoter pass it by. So an old instance next to a new one
-- refuses the SKUs the new one has touched, rather than double-reserving.
-- This version keeps the count in `shard_count` beside `layout`, and refuses
-- a layout newer than its own (src/inventory/mod.rs, `Inventory::meta`).
--
-- KEYS[1] fg:{SKU}:meta
-- ARGV[1] the layout this version writes ('3')
-- Returns the meta's fields after the change, as HGETALL answers them (an
-- empty array when the SKU has no meta).
--
-- An earlier instance's forced preload may write `shards` again after the
-- upgrade: the larger count wins (a layout only ever gains shards), and the
-- field goes again.
--
-- Layout 2 -> 3 (a hold's verdict is its record, named by the claim's
-- token; lua/reserve.lua): only the field `layout` changes. This version
-- reads what a layout-2 instance wrote (claims without a token walk with `R`
-- verdicts), a layout-2 instance refuses a layout-3 meta (503).
local meta, layout = KEYS[1], ARGV[1]
local old = redis.call('HGET', meta, 'shards')
if old then
  local count = redis.call('HGET', meta, 'shard_count')
  if not count or (tonumber(old) or 0) > (tonumber(count) or 0) then count = old end
  redis.call('HSET', meta, 'shard_count', count, 'layout', layout)
  redis.call('HDEL', meta, 'shards')
elseif redis.call('HGET', meta, 'layout') == '2' then
  redis.call('HSET', meta, 'layout', layout)
end
return redis.call('HGETALL', meta)
