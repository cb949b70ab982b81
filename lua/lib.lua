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

-- A cart's outbox (cart_begin.lua, cart_move.lua): every change of a cart's
-- status appends one entry to its bucket's stream `fg:{carts~X}:events`, in
-- the same slot as the record `fg:{carts~X}:c:<id>` and the same atomic step
-- as the change (docs/carts.md, "Ledger"). The entry is the cart as the move
-- left it: type 'cart', cart id, status, seq (the cart's own event counter),
-- owner, user, lines (`<sku>|<qty>|<reservation id or ''>`, one a line),
-- why, bad, exp, ts. Bounded like the shards' streams.
local function cart_emit(rkey, events, ts)
  local all = redis.call('HGETALL', rkey)
  local f = {}
  for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
  local seq = redis.call('HINCRBY', rkey, 'seq', 1)
  local lines = {}
  for i = 0, (tonumber(f.n) or 0) - 1 do
    lines[#lines + 1] = (f['l' .. i] or '') .. '|' .. (f['r' .. i] or '')
  end
  redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'type', 'cart', 'cart', string.match(rkey, ':c:(%x+)$') or '', 'status', f.status or '',
    'seq', seq, 'owner', f.owner or '', 'user', f.user or '', 'lines', table.concat(lines, '\n'),
    'why', f.why or '', 'bad', f.bad or '', 'exp', f.exp or '', 'ts', ts)
end

-- A reservation record, fg:{SKU#s}:r:<rid>, is one string:
--   status|qty|created|exp|first_exp|ended|fixed|<user>\n<idempotency key>
-- status held | confirmed | released | expired; created, exp, ended in server
-- ms; first_exp the deadline of the first answer, set once extend has moved
-- exp (a replay answers it); fixed 'reconcile' once reconcile --fix settled
-- it; empty fields are ''. User and key are free text that may hold '|',
-- but never a control character (src/domain.rs refuses them; the outbox's
-- batched `held` entry relies on that too), so a newline ends the user.
-- One SET with its TTL costs Redis ~10k fewer instructions per hold than a
-- hash and its PEXPIRE (84.5k -> 74.2k at batches of 25; bench/notes/2026-12-02-records-as-strings.md,
-- "Reservation records as strings").
local REC_FIELDS = {'status', 'qty', 'created', 'exp', 'first_exp', 'ended', 'fixed'}

local function rec_encode(r)
  return r.status .. '|' .. r.qty .. '|' .. r.created .. '|' .. r.exp .. '|' .. r.first_exp ..
    '|' .. r.ended .. '|' .. r.fixed .. '|' .. r.user .. '\n' .. r.idem
end

local function rec_decode(v)
  local r, at = {}, 1
  for i = 1, 7 do
    local bar = string.find(v, '|', at, true)
    r[REC_FIELDS[i]] = string.sub(v, at, bar - 1)
    at = bar + 1
  end
  local nl = string.find(v, '\n', at, true)
  r.user = string.sub(v, at, nl - 1)
  r.idem = string.sub(v, nl + 1)
  return r
end

-- Data layout 6, one Redis server (src/inventory/scripts.rs turns this off
-- on Redis Cluster, where a script may touch its own slot only): the record
-- of a hold made by its key's first request rides in the key's claim, one
-- key instead of two (lua/reserve.lua). The claim is named by the first 16
-- hex digits of the key's token, `fg:{claim~<first digit>}:<16 hex>`
-- (src/inventory/keys.rs), so the reservation id `SKU.s.<token>` names it
-- too; the claim then holds `<body>\0<rid>|<record>`. Every other record
-- (a later step's hold, a cart line's, the promoter's, one written before
-- layout 6, and every record on a cluster) is at fg:{SKU#s}:r:<rid>.
local CLAIM_RECORDS = true

-- The claim the token at the end of the record key rkey names, and the rid.
local function claim_of(rkey)
  local t = string.sub(rkey, -32)
  local at = string.find(rkey, '}:r:', 1, true)
  return 'fg:{claim~' .. string.sub(t, 1, 1) .. '}:' .. string.sub(t, 1, 16),
    at and string.sub(rkey, at + 4) or ''
end

-- The record at rkey as a table of its fields, or nil when there is none.
-- On one server it is first looked for in the claim its token names (above);
-- a record found there carries where it lives (r.at, the claim, and r.head,
-- what precedes the record in it), for rec_save. (pcall: a claim key of
-- another node, should these scripts run on a cluster with the switch on,
-- is no record, not an error.) A record an earlier version wrote as a hash
-- (GET answers WRONGTYPE) is read from its fields; the next rec_save turns
-- it into a string, its TTL kept. (Any other error of the GET, e.g. a key
-- of a half-moved slot, is raised again by the HMGET.) Since data layout 5
-- the key may instead hold a walk-on marker `M|<fp>` (reserve.lua: the
-- shard refused the key of that token): no reservation, so nil, and the
-- marker as a second value for reserve.lua. (A status never begins with
-- 'M', byte 77.)
local function rec_load(rkey)
  if CLAIM_RECORDS and string.byte(rkey, -33) == 46 then -- '.' <32 hex>
    local ckey, rid = claim_of(rkey)
    local v = redis.pcall('GET', ckey)
    if type(v) == 'string' then
      local z = string.find(v, '\0', 1, true)
      if z then
        local bar = z + #rid + 1
        if string.byte(v, bar) == 124 and string.sub(v, z + 1, bar - 1) == rid then
          local r = rec_decode(string.sub(v, bar + 1))
          r.at, r.head = ckey, string.sub(v, 1, bar)
          return r
        end
      end
    end
  end
  local v = redis.pcall('GET', rkey)
  if type(v) ~= 'table' then
    if not v then return nil end
    if string.byte(v, 1) == 77 then return nil, v end
    return rec_decode(v)
  end
  local h = redis.call('HMGET', rkey, 'status', 'qty', 'created', 'exp', 'first_exp', 'ended',
    'fixed', 'user', 'idem')
  if not h[1] then return nil end
  return {status = h[1], qty = h[2] or '0', created = h[3] or '0', exp = h[4] or '0',
    first_exp = h[5] or '', ended = h[6] or '', fixed = h[7] or '', user = h[8] or '',
    idem = h[9] or ''}
end

-- May a caller of scope `scope` see (and act on) the record r? Its owner is
-- the scope of its idempotency key: the text before the key's first space,
-- '' when unscoped (src/domain.rs, ScopedKey). A storefront sees its own
-- records and unscoped ones (made before keys were scoped, or with no keys
-- configured); scope '*' (an admin key, or no keys configured) sees all.
-- Another storefront's record answers 'missing', as a record that does not
-- exist: a storefront cannot tell them apart.
local function rec_visible(r, scope)
  if scope == '*' then return true end
  local sp = string.find(r.idem, ' ', 1, true)
  if not sp then return true end
  local owner = string.sub(r.idem, 1, sp - 1)
  return owner == '' or owner == scope
end

-- Write back a record read by rec_load, where it was found, its TTL unchanged.
local function rec_save(rkey, r)
  if r.at then
    redis.call('SET', r.at, r.head .. rec_encode(r), 'KEEPTTL')
  else
    redis.call('SET', rkey, rec_encode(r), 'KEEPTTL')
  end
end

-- Another key of the same shard, `fg:{SKU#s}:<name>`, named from one of its
-- keys (so in the same slot: Redis Cluster checks a script's keys against
-- the slot of its declared keys).
local function sibling(key, name)
  return string.sub(key, 1, #key - #string.match(key, '[^:]*$')) .. name
end

-- The shard's live holds of more than one unit, fg:{SKU#s}:live: hash
-- rid -> qty, one field per such hold from reserve.lua until it ends
-- (end_hold, confirm.lua, fix.lua). The expiry list holds only rids: when a
-- due hold's record is gone (its TTL ran out while the sweeper stalled, or
-- eviction), this is where expire.lua finds the units to return — and a
-- hold with no field held one unit. (Single-unit holds, the common case,
-- skip the HSET: a field for every hold cost 74.3k -> 79.2k Redis
-- instructions per hold, docs/stock-corners.md.)
local function live_of(holds)
  return sibling(holds, 'live')
end

-- End a live hold without a sale: its units go back to stock exactly once
-- (the status moves away from 'held' in the same step, and only 'held'
-- records get here), and its idempotency key leaves the shard's key set
-- fg:{SKU#s}:keys (reserve.lua), which so holds the keys of live and sold
-- holds only: never more than the shard's units, however many holds come
-- and go. r: the hold's record, as rec_load read it.
local function end_hold(rkey, r, stock, books, holds, events, reserved, rid, status, ts)
  local qty = tonumber(r.qty)
  -- `live` is not a declared key, so Redis Cluster does not check it before
  -- the script runs: while the slot is half-moved, touching it when it has
  -- moved ends the script. First, so that it ends with nothing written.
  if qty ~= 1 then redis.call('HDEL', live_of(holds), rid) end
  redis.call('INCRBY', stock, qty)
  redis.call('HINCRBY', books, 'held', -qty)
  r.status, r.ended = status, string.format('%d', ts)
  rec_save(rkey, r)
  redis.call('ZREM', holds, rid)
  redis.call('SREM', reserved, r.idem)
  emit(events, status, rid, qty, r.user, ts)
end

-- A buyer's field in a waitlist's `users` hash (one live ticket per buyer):
-- a buyer is its storefront's, so the user id of a storefront's key scope
-- `owner` is `<owner>\n<user>` (no user id holds a control character, so
-- no unscoped one, kept as the bare user id, takes this form), and another
-- storefront naming a buyer alike neither blocks nor learns his ticket.
local function wl_buyer(owner, user)
  if not owner or owner == '' then return user end
  return owner .. '\n' .. user
end

-- A waitlist's promotion rate, for wait estimates: fg:{wl:SKU}:rate, a hash
-- of WL_RATE_BUCKETS one-second buckets, field = unix second mod the window,
-- value '<unix second>:<tickets promoted in that second>'. A bucket whose
-- second is older than the window counts nothing and is overwritten by the
-- next promotion that lands on it, so the hash never has more than
-- WL_RATE_BUCKETS fields, and it expires two windows after the last
-- promotion (an idle SKU keeps nothing). Written by wl_end.lua, read by
-- wl_wait.lua; the estimate itself is src/inventory/waitlist.rs's.
local WL_RATE_BUCKETS = 60

local function wl_rate_count(rate, ts)
  local sec = math.floor(ts / 1000)
  local field = tostring(sec % WL_RATE_BUCKETS)
  -- (an estimate never fails a promotion: a rate key of another type, which
  -- only a hand-made edit could leave, is skipped, not raised — wl_end has
  -- written the ticket's end by then, and a script error keeps what it wrote)
  local cur = redis.pcall('HGET', rate, field)
  if type(cur) == 'table' and cur.err then return end
  local n = 1
  if cur then
    local colon = string.find(cur, ':', 1, true)
    local c = colon and tonumber(string.sub(cur, colon + 1))
    -- (a count this script did not write, NaN or out of range, restarts at 1)
    if c and c >= 0 and c < 1e12 and tonumber(string.sub(cur, 1, colon - 1)) == sec then
      n = math.floor(c) + 1
    end
  end
  redis.call('HSET', rate, field, string.format('%d:%d', sec, n))
  redis.call('PEXPIRE', rate, 2 * WL_RATE_BUCKETS * 1000)
end

-- Tickets promoted within the window ending at ts, and the start (ms) of the
-- oldest second that counted any (0 when none did).
local function wl_rate_read(rate, ts)
  local now_sec = math.floor(ts / 1000)
  local count, oldest = 0, nil
  local vals = redis.pcall('HVALS', rate)
  if vals.err then vals = {} end -- (not a hash: nothing known, as above)
  for _, v in ipairs(vals) do
    local colon = string.find(v, ':', 1, true)
    local sec = colon and tonumber(string.sub(v, 1, colon - 1))
    local n = colon and tonumber(string.sub(v, colon + 1))
    -- (comparisons are false for NaN: a value no promotion wrote counts nothing)
    if sec and n and n > 0 and n < 1e12 and sec > now_sec - WL_RATE_BUCKETS and sec <= now_sec then
      n = math.floor(n)
      count = count + n
      if not oldest or sec < oldest then oldest = sec end
    end
  end
  return count, (oldest or 0) * 1000
end
