-- flashgate Lua prelude: prepended to every script in lua/ when it is loaded
-- (src/inventory/scripts.rs), so every script shares one definition of the
-- clock, the outbox and the end of a hold.
--
-- Invariant kept by every script, per shard (all keys share the shard's hash tag):
--   books.initial + books.xin - books.xout = stock + books.held + books.sold
-- and stock never goes negative.

-- One clock for every deadline: the Redis server's. Confirm, release, extend
-- and the sweeper all compare against it, so confirm-vs-expiry has one winner.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The outbox: every stock change appends one event to the shard's stream in
-- the same atomic step, for the ledger writer. Bounded so an absent ledger
-- writer cannot exhaust Redis memory.
local EVENTS_MAXLEN = 1000000
local function emit(events, kind, rid, qty, user, ts)
  redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'type', kind, 'rid', rid, 'qty', qty, 'user', user, 'ts', ts)
end

-- End a live hold: its units go back to stock exactly once (the status moves
-- away from 'held' in the same step, and only 'held' records get here).
local function end_hold(rkey, stock, books, holds, events, rid, qty, user, status, ts)
  redis.call('INCRBY', stock, qty)
  redis.call('HINCRBY', books, 'held', -qty)
  redis.call('HSET', rkey, 'status', status, 'ended', ts)
  redis.call('ZREM', holds, rid)
  emit(events, status, rid, qty, user, ts)
end
