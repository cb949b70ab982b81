-- records: read reservation records, for GET /reservations/{id} and
-- reconcile (src/inventory/mod.rs, src/reconcile.rs). The record's format
-- belongs to lib.lua alone; this answers its fields. Writes nothing.
--
-- KEYS: record keys fg:{SKU#s}:r:<rid>, all of one shard (one slot)
-- Returns one entry per key, in order: false when there is no record, else
--   {status, qty, created, exp, first_exp, ended, user, idempotency key}
-- (a field not set is '')
local out = {}
for i, rkey in ipairs(KEYS) do
  local r = rec_load(rkey)
  if r then
    out[i] = {r.status, r.qty, r.created, r.exp, r.first_exp, r.ended, r.user, r.idem}
  else
    out[i] = false
  end
end
return out
