-- reserve: check-and-DECRBY on one shard, create the hold, record the
-- idempotency key — one atomic step, for a batch of requests that arrived
-- together for this shard (src/inventory/batch.rs), decided one after the
-- other in arrival order. A batch of one is the plain case.
--
-- KEYS (the shard's, all with its hash tag):
-- KEYS[1] fg:{SKU#s}:stock   KEYS[2] fg:{SKU#s}:books   KEYS[3] fg:{SKU#s}:holds
-- KEYS[4] fg:{SKU#s}:events  KEYS[5] fg:{SKU#s}:wlopen (the waitlist gate)
-- KEYS[6] fg:{SKU#s}:keys: the idempotency keys of the live and sold holds
--   made here (the sold-out fast path loads it, so a retry of a key that got a
--   unit is replayed, not refused from memory). A key leaves it when its hold
--   ends without a sale (lib.lua's end_hold: release, expiry), so it is
--   bounded by the shard's units, not by the holds ever made.
-- (and fg:{SKU#s}:live, named from KEYS[3], lib.lua's live_of: the qty of
-- each hold of more than one unit, for the sweeper should its record vanish)
-- A request's own keys are named from KEYS[1]'s prefix `fg:{SKU#s}:` — its
-- verdict `idem:<key>` and its record `r:<rid>` — so they share the shard's
-- slot (Redis Cluster checks every key a script touches against the slot of
-- its declared keys); passing them in costs Redis more than building them.
-- While the slot is half-moved to another master, touching such a key that
-- is not on this one ends the script with "non local key" (the service
-- resends it, src/inventory/scripts.rs). It ends before anything was
-- written: a request writes (its hold, its walk-on verdict) only after its
-- verdict's GET found no verdict, and that GET of a key not here is what
-- fails — for every request of the call alike, since the slot's state does
-- not change during a script. A request whose claim was made apart and new
-- (claim body '!') reads nothing before its hold: its first write is the
-- SET NX of a record key that is not here, and Redis refuses that command
-- before running it, so it too fails with nothing written. (A claim made in
-- the call writes first, but claims ride in this script on one Redis server
-- only, never in a cluster.)
--
-- ARGV[1] hold_ms   ARGV[2] idem_ttl_ms   ARGV[3] record_ttl_ms (garbage
-- collection of the record, never stock return)
-- ARGV[4] the SKU's sale window, `<opens_at ms>|<closes_at ms>` (either may be
--   empty), or '' for none: from the service's cached SKU meta (at most
--   META_TTL = 2 s old; docs/fair-draw.md). Judged against this server's
--   TIME, so every instance agrees to the millisecond. Before opens_at a
--   request that would take units answers 'w' .. ms left, from closes_at on
--   'x'; a replay of a key's hold is still answered, and a refusal writes
--   nothing (no walk-on verdict: a retry after the opening may hold).
-- then per request i, 7 values from ARGV[5 + 7(i-1)]:
--   idempotency key, rid (`SKU.s.<token>`: the token of the key's claim, the
--   same in every request with the key, so the record r:<rid> is this shard's
--   verdict that the key holds a unit here; on one server the token also
--   names the claim, see below), qty (';<qty>' for a waitlist join), user,
--   flags (1 = mark_walk_on: on "dry", write the walk-on
--   verdict, else leave no trace; + 2 = gate: refuse while the SKU's
--   waitlist has waiters, units coming back belong to them, see
--   src/inventory/waitlist.rs; the waitlist promoter does not gate; + 4 =
--   verdict: a key with no token in its claim — the promoter's, which has
--   no claim, or a claim of data layout 2 — whose rid is fresh per request:
--   a hold also writes the `R|rid|fp` verdict, which its retries find),
--   claim record fg:{claim~H}:<16 hex>, claim body (or '' and '!': see below).
--   The request's fingerprint fp, `<qty>:<user>` (`<qty>;w:<user>` for a
--   waitlist join; src/inventory/reserve.rs), is built from them.
--
-- The claim (one Redis server only, where a script may touch keys of any
-- slot): a non-empty claim body makes this request first do what claim.lua
-- does for its key — SET NX GET of the claim record — and stop with
-- 'c<earlier body>' when the record holds another body, before anything of
-- the shard is read or changed. It saves the separate claim.lua round trip of
-- the walk's first step (src/inventory/mod.rs). An empty body skips it (the
-- claim was made apart, as on Redis Cluster, or a later step of the walk).
-- A claim this request has just created also tells that the key was never
-- seen: no shard can hold a verdict for it, so its verdict is not read.
-- And since data layout 6 a request that can hold (units to spare, the
-- window open) creates the claim with its hold's record inside:
-- `<body>\0<rid>|<record>`, with the record's TTL, one key instead of two
-- (lib.lua's rec_load finds it from the rid, whose token names the claim:
-- src/inventory/keys.rs). The claim is then the hold's verdict here too: a
-- resent call meets its own body and answers the hold that rides in it. A
-- hold made by any other step is written at r:<rid> as before.
-- The claim body '!' says the same of a claim made apart (Redis Cluster):
-- claim.lua answered nil, so the claim was new before this call. Here a
-- duplicate of the request, or this very call resent by the client library,
-- may have left a verdict since: a hold is written with SET NX (its record
-- or a walk-on marker at the key fails it, and the verdicts are then read
-- and answered), and every other answer reads the verdicts first. (A
-- verdict is written after its key's claim and lives as long, so it can only
-- outlive the claim by the milliseconds between the two: a key reused after
-- its claim expired, >= idem_ttl later, is a new request either way.)
--
-- Returns one flat array: [1] the deadline (ms) of the holds this call made,
-- shared by all of them (0 if none), then one reply per request, in order,
-- each a string:
--   'h'                          a new hold was created (its id: the rid sent)
--   'c' .. earlier_body          the key's claim holds another request body
--   'r' .. rid|qty|expires_at_ms|user   this key already holds a reservation
--                                here (expires_at: the first answer's)
--   'v' .. available             this key was refused here before: walk on
--   'm'                          this key was used with another request body
--   'd' .. available             not enough stock here
--   'u'                          the shard has no counters (SKU not preloaded)
--   'w' .. ms_left               the sale window has not opened (ARGV[4])
--   'x'                          the sale window has closed (ARGV[4])
--
-- Idempotency: the verdict of a shard for a key is sticky (the reservation's
-- record r:<SKU.s.token>, an `R` verdict for a key without a token, or the
-- walk-on verdict `M|fp`: at r:<SKU.s.token> for a key with a token, a
-- marker that lib.lua's rec_load answers as no record, at idem:<key> for
-- one without), written in the same step that decides it. A request whose
-- claim was not new reads `idem:<key>` (R, or the M that data layout 3 kept
-- there) and then the record or marker its rid names. (Data layout 5;
-- older instances are kept off it by fg:layout: docs/UPGRADING.md.) Every request
-- with one key visits the shards in one fixed order, so all of them see the
-- same verdicts and at most one reservation can exist per key. A second run of
-- this script (a client retry of an in-flight command), or a second request
-- with the key later in the same batch, returns 'r' (replay).
--
-- The outbox: the holds of one call are one 'held' event, its field `holds`
-- one line `rid|qty|user` per hold (the ledger writer makes a row of each,
-- src/ledger.rs), instead of one stream entry per hold.
--
-- Cost (bench/notes/2026-12-02-redis-instructions-per-hold.md): each request pays
-- its arguments, SET NX GET of its claim (if any), GET of its verdict and
-- its record (unless the claim was new) and, when it gets a unit, SET PX of
-- its record (one string, lib.lua) — no verdict key (75.3k -> 64.4k per hold
-- at B = 25, bench/notes/2026-12-04-hold-keys.md; 62.4k -> 59.0k without a
-- tonumber and a concatenation per hold and with ARGV and redis.call in
-- locals, bench/notes/2026-12-05-perf-round2.md); on one server a new
-- hold's record rides in its claim, and the fingerprint is no argument
-- (58.4k -> 45.0k, bench/notes/2026-12-05-layout-6.md);
-- the stock, books, expiry list,
-- live holds (only holds of more than one unit), key set and outbox change
-- once per call. Numbers go to Redis as the strings they came in (or
-- formatted once per call with %d): Redis formats a Lua number argument with
-- %.17g, a measurable share of the script's time.
local stock, books, holds, events, wlopen, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local hold_ms, idem_ttl, record_ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local window = ARGV[4]
local prefix = string.sub(stock, 1, #stock - #'stock')
local idem_prefix, record_prefix = prefix .. 'idem:', prefix .. 'r:'

local ts, exp, ts_s, exp_s -- one clock reading per call, taken at the first hold
local gate_open                -- EXISTS wlopen, read at most once per call
local shut, shut_ts            -- the window's verdict and its clock reading, once per call
local available                -- the shard's stock as this call has left it
local taken = 0                -- units held by this call: one DECRBY/HINCRBY at the end
local zadd, won, held, live = {}, {}, {}, {} -- one ZADD, SADD, XADD and HSET at the end
local nz, nw = 0, 0            -- entries in zadd, in won (= in held)

-- The flags argument is one character, '0'..'7' (1 = mark_walk_on, 2 =
-- gate, 4 = verdict), its switches tested by comparing it with the values
-- that have them: equal strings are one string in Lua, so each == compares
-- two pointers. (Tables of them, built on every call as everything in a
-- script is, cost ~7k Redis instructions per call: 198k -> 191k per hold at
-- B = 1, bench/notes/2026-12-05-perf-round2.md.)

-- (the two calls every hold makes go through a local: a global and a field
-- look-up less per call, like `argv` below; ~0.2k and ~0.8k per hold)
local call = redis.call

-- The answer to a walk-on verdict `M|<fp>`, wherever it was found.
local function walked_on(v, fp, gated)
  if string.sub(v, 3) ~= fp then return 'm' end
  if gated then return 'v0' end
  return 'v' .. string.format('%d', available or 0)
end

-- The replay of the hold `rid` whose record is r: the first answer's
-- deadline (first_exp, written by extend.lua when it first moves it).
local function replayed(rid, r)
  local first = r.first_exp
  if first == '' then first = r.exp end
  return 'r' .. rid .. '|' .. r.qty .. '|' .. first .. '|' .. r.user
end

-- This shard's verdict for a key, if it has one: its reply, or nil. `idem:`
-- holds the `R` verdict of a key without a token (flags 4) and the walk-on
-- verdicts data layout 3 wrote; the record key r:<rid> the key's hold, or
-- since layout 5 its walk-on marker `M|<fp>` (rec_load answers nil and the
-- marker).
local function seen(key, rid, rkey, fp, flags, gated)
  local v = redis.call('GET', idem_prefix .. key)
  if v then
    if string.sub(v, 1, 1) == 'M' then return walked_on(v, fp, gated) end
    -- 'R|<rid>|<fp>' (rids never contain '|'): a walk with the verdict
    -- switch, or one of data layout 2
    local bar = string.find(v, '|', 3, true)
    local old = string.sub(v, 3, bar - 1)
    if string.sub(v, bar + 1) ~= fp then return 'm' end
    local r = rec_load(record_prefix .. old)
    if not r then return 'r' .. old .. '|||' end
    return replayed(old, r)
  end
  -- the hold or the walk-on marker this key's token names here, if any (a
  -- key with the verdict switch found its hold by the `R` verdict above)
  if flags >= '4' then return nil end
  local r, mark = rec_load(rkey)
  if r then
    if r.idem ~= key then return 'm' end
    return replayed(rid, r)
  end
  if mark then return walked_on(mark, fp, gated) end
  return nil
end

-- The refusal this shard gives a request of qty units now, if any: 'u'
-- (not loaded), the window's 'w'/'x', or 'd' (not enough units here; none
-- while gated). Reads the stock and the window once per call.
local function refusal_of(qty, gated)
  if not available then return 'u' end
  if window ~= '' then
    if shut == nil then
      shut = false
      local bar = string.find(window, '|', 1, true)
      local opens, closes = tonumber(string.sub(window, 1, bar - 1)), tonumber(string.sub(window, bar + 1))
      local t = now_ms()
      shut_ts = t -- (the holds' clock too: one TIME per call)
      if opens and t < opens then
        shut = 'w' .. string.format('%d', opens - t)
      elseif closes and t >= closes then
        shut = 'x'
      end
    end
    if shut then return shut end
  end
  if gated or available < qty then return 'd' end
  return nil
end

-- The call's clock, read at its first hold (or the window's reading).
local function stamp()
  ts = shut_ts or now_ms()
  exp = ts + hold_ms
  ts_s, exp_s = string.format('%d', ts), string.format('%d', exp)
end

local function one(key, rid, qty_s, user, flags, ckey, claim)
  -- (Lua's tonumber of a string runs strtod twice, ~1.1k Redis
  -- instructions per hold; one unit, the common case, is compared instead:
  -- equal strings are one string in Lua, so == compares two pointers)
  local qty = qty_s == '1' and 1 or tonumber(qty_s)
  -- the request's fingerprint is `<qty><sep><user>` (src/inventory/reserve.rs),
  -- built only where it is compared or written (an argument of its own cost
  -- ~1.2k instructions per hold): `;w:` for a waitlist join, whose qty
  -- comes as ';<qty>'
  local sep = ':'
  if not qty then
    qty_s = string.sub(qty_s, 2)
    qty, sep = tonumber(qty_s), ';w:'
  end
  local gated = false
  if flags == '3' or flags == '2' or flags == '7' or flags == '6' then -- gate
    if gate_open == nil then gate_open = redis.call('EXISTS', wlopen) == 1 end
    gated = gate_open
  end
  if available == nil then available = tonumber(redis.call('GET', stock)) or false end
  -- fresh: the key's claim was new, made in this very call; apart: it was
  -- new when claim.lua made it, before this call (claim body '!'), so this
  -- shard has a verdict for the key only if another request with the key
  -- (a duplicate in flight, or this call resent) came first: its writes
  -- are made with NX and any other answer reads the verdicts first
  local fresh, apart = false, false
  local refusal
  local rode = false -- the hold rode in the claim made here: only bookkeeping is left
  if claim == '!' then
    apart = true
  elseif claim ~= '' then
    -- The claim made here (one server). A request that can hold makes it
    -- with its hold's record inside (data layout 6, lib.lua's rec_load):
    -- new, it is the hold, and nothing else is written but the call's
    -- bookkeeping. (Read first: the refusal reads no verdict either way,
    -- and a claim that was not new is answered before anything is written.)
    -- (the common case, units to spare and no window, is tested inline)
    if not available or gated or available < qty or window ~= '' then
      refusal = refusal_of(qty, gated)
    end
    local earlier
    if refusal then
      earlier = call('SET', ckey, claim, 'NX', 'GET', 'PX', idem_ttl)
    else
      if not ts then stamp() end
      -- the record as lib.lua's rec_encode writes it, built in place (one
      -- concatenation: a table for rec_encode costs ~6k instructions more
      -- per hold, a second string ~1k)
      earlier = call('SET', ckey, claim .. '\0' .. rid .. '|held|' .. qty_s .. '|' .. ts_s .. '|' ..
        exp_s .. '||||' .. user .. '\n' .. key, 'NX', 'GET', 'PX', record_ttl)
      rode = not earlier
    end
    if rode then
      -- (nothing more to decide)
    elseif earlier then
      -- the body, and the hold that rides in the claim, if any (after a NUL)
      local z = string.find(earlier, '\0', 1, true)
      local body = z and string.sub(earlier, 1, z - 1) or earlier
      if body ~= claim then return 'c' .. body end
      -- the same body, so the same token: this call resent by the client
      -- library, or a duplicate sent with it (the claim's hold is this
      -- very step's if it is this shard's)
      if z and string.sub(earlier, z + 1, z + #rid) == rid
          and string.byte(earlier, z + #rid + 1) == 124 then
        return replayed(rid, rec_decode(string.sub(earlier, z + #rid + 2)))
      end
    else
      fresh = true
    end
  end

  if not rode then
    -- (the verdict's name, idem_prefix .. key, is built only where it is
    -- used: a new claim with a unit to spare never touches it)
    local rkey = record_prefix .. rid
    if not fresh and not apart then
      local v = seen(key, rid, rkey, qty_s .. sep .. user, flags, gated)
      if v then return v end
    end

    -- every answer but a new hold reads the verdicts first when the claim was
    -- made apart (a duplicate may have held here meanwhile)
    if refusal == nil then refusal = refusal_of(qty, gated) end
    if refusal then
      if apart then
        local v = seen(key, rid, rkey, qty_s .. sep .. user, flags, gated)
        if v then return v end
      end
      if refusal ~= 'd' then return refusal end
      if flags == '3' or flags == '1' or flags == '7' or flags == '5' then -- mark_walk_on
        if flags < '4' then
          redis.call('SET', rkey, 'M|' .. qty_s .. sep .. user, 'PX', idem_ttl)
        else
          redis.call('SET', idem_prefix .. key, 'M|' .. qty_s .. sep .. user, 'PX', idem_ttl)
        end
      end
      if gated then return 'd0' end
      return 'd' .. string.format('%d', available)
    end

    if not ts then stamp() end
    local rec = 'held|' .. qty_s .. '|' .. ts_s .. '|' .. exp_s .. '||||' .. user .. '\n' .. key
    if apart then
      -- NX: a verdict written since claim.lua (a duplicate's hold or
      -- marker, or this call's own first run, resent) is answered instead
      if not call('SET', rkey, rec, 'NX', 'PX', record_ttl) then
        return seen(key, rid, rkey, qty_s .. sep .. user, flags, gated) or 'm'
      end
    else
      call('SET', rkey, rec, 'PX', record_ttl)
    end
    if flags >= '4' then
      redis.call('SET', idem_prefix .. key, 'R|' .. rid .. '|' .. qty_s .. sep .. user, 'PX', idem_ttl)
    end
  end
  -- the hold's share of the call's bookkeeping (one DECRBY, ZADD, SADD,
  -- XADD at the end; inline, not a function: ~0.6k instructions per hold)
  available = available - qty
  taken = taken + qty
  nz = nz + 2
  zadd[nz - 1], zadd[nz] = exp_s, rid
  if qty ~= 1 then   -- a hold with no field in `live` held 1 unit (lib.lua)
    live[#live + 1] = rid
    live[#live + 1] = qty_s
  end
  nw = nw + 1
  won[nw] = key
  held[nw] = rid .. '|' .. qty_s .. '|' .. user
  return 'h'
end

local replies, argv = {0}, ARGV
local n = (#argv - 4) / 7
for i = 1, n do
  local a = 4 + 7 * (i - 1)
  replies[i + 1] = one(argv[a + 1], argv[a + 2], argv[a + 3], argv[a + 4], argv[a + 5],
    argv[a + 6], argv[a + 7])
end
if taken > 0 then
  replies[1] = exp
  redis.call('DECRBY', stock, taken)
  redis.call('HINCRBY', books, 'held', taken)
  redis.call('ZADD', holds, unpack(zadd))
  if #live > 0 then redis.call('HSET', live_of(holds), unpack(live)) end
  redis.call('SADD', reserved, unpack(won))
  redis.call('PEXPIRE', reserved, record_ttl)
  redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'type', 'held', 'ts', ts_s, 'holds', table.concat(held, '\n'))
end
return replies
