-- cart_move: every state transition of a cart record, compare-and-set on its
-- status (src/inventory/cart.rs; the states and who moves them:
-- docs/carts.md). Also records a held line while the cart is `pending`
-- (a move from pending to pending that sets `r<i>`): a saga that was
-- overtaken by the sweeper learns it here and gives its hold back.
--
-- KEYS[1] fg:{carts~X}:c:<id>   KEYS[2] fg:{carts~X}:events (its bucket's outbox)
-- ARGV[1] the states it may move from, each between commas (`,held,confirming,`)
-- ARGV[2] the state to move to
-- ARGV[3] '1': only if the record's deadline has passed (server clock), else ''
-- ARGV[4] the new deadline, ms from now ('' keeps it)
-- ARGV[5..] field, value pairs to set with the move
--
-- Returns {1, new status, deadline} when moved, {0, current status,
-- deadline} when not ('' status: no record). Idempotent: the same move
-- resent finds the state it made and answers {0, it} (callers treat
-- "already there" as done). A move that changes the status appends the
-- cart, as it now is, to KEYS[2] (lib.lua cart_emit) in the same step;
-- pending -> pending (a line recorded) and held -> held (extend) do not.
local st = redis.call('HMGET', KEYS[1], 'status', 'deadline')
local status, deadline = st[1], tonumber(st[2] or '0')
if not status then return {0, '', 0} end
if not string.find(ARGV[1], ',' .. status .. ',', 1, true) then
  return {0, status, deadline}
end
local now = now_ms()
if ARGV[3] == '1' and deadline > now then return {0, status, deadline} end
local fields = {'status', ARGV[2]}
if ARGV[4] ~= '' then
  deadline = now + tonumber(ARGV[4])
  table.insert(fields, 'deadline')
  table.insert(fields, deadline)
end
for i = 5, #ARGV, 2 do
  table.insert(fields, ARGV[i])
  table.insert(fields, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[2] ~= status then cart_emit(KEYS[1], KEYS[2], now) end
return {1, ARGV[2], deadline}
