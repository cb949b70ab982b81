-- cart_begin: the cart record is written first, in its bucket's slot
-- (`{carts~X}`), before any line is reserved (src/inventory/cart.rs,
-- docs/carts.md). Creates it in status `pending` with the saga's deadline,
-- or answers the record that exists (a retry, or a resumed saga).
--
-- KEYS[1] fg:{carts~X}:c:<id>   KEYS[2] fg:{carts~X}:events (its bucket's outbox)
-- ARGV[1] owner scope ('' unscoped)   ARGV[2] user_id   ARGV[3] fingerprint
-- ARGV[4] saga ms (deadline = server now + this)   ARGV[5] record ttl ms
-- ARGV[6..] the lines, `<sku>|<qty>` each, in order
--
-- Returns {'new' | 'old', field, value, field, value, ...} (the record's
-- HGETALL), or {'mismatch'} when a record with another fingerprint exists
-- (never, for an id a claim fixed; a guard, not a path).
-- A new record is appended to KEYS[2] (status pending: the cart was created).
-- Invariant: a record is created once; its owner, user, lines and
-- fingerprint never change afterwards.
local cur = redis.call('HGET', KEYS[1], 'fp')
if cur then
  if cur ~= ARGV[3] then return {'mismatch'} end
  local all = redis.call('HGETALL', KEYS[1])
  table.insert(all, 1, 'old')
  return all
end
local now = now_ms()
local fields = {'status', 'pending', 'owner', ARGV[1], 'user', ARGV[2], 'fp', ARGV[3],
  'created', now, 'deadline', now + tonumber(ARGV[4]), 'n', #ARGV - 5}
for i = 6, #ARGV do
  table.insert(fields, 'l' .. (i - 6))
  table.insert(fields, ARGV[i])
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
cart_emit(KEYS[1], KEYS[2], now)
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'new')
return all
