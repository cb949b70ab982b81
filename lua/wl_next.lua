-- wl_next: the next waitlist entries for the promoter that holds the SKU's
-- lease, oldest first: first every entry still pending in the consumer group
-- (delivered to a promoter that died, or to us in an earlier round that found
-- no stock), claimed with XAUTOCLAIM; only then new entries (XREADGROUP).
-- An entry leaves the pending list only when wl_end acknowledges it, so a
-- promoter that dies between reading and acknowledging loses nothing.
--
-- KEYS[1] fg:{wl:SKU}:stream
-- ARGV[1] consumer name   ARGV[2] count
-- Returns {entry_id1, ticket1, entry_id2, ticket2, ...}
local stream, me, count = KEYS[1], ARGV[1], ARGV[2]
local out = {}
local ok, claimed = pcall(redis.call, 'XAUTOCLAIM', stream, 'promoters', me, 0, '0-0', 'COUNT', count)
if ok then
  for _, e in ipairs(claimed[2]) do
    if e and e[2] then out[#out + 1] = e[1]; out[#out + 1] = e[2][2] end
  end
end
if #out > 0 then return out end
local ok2, r = pcall(redis.call, 'XREADGROUP', 'GROUP', 'promoters', me, 'COUNT', count, 'STREAMS', stream, '>')
if ok2 and r then
  for _, e in ipairs(r[1][2]) do
    if e and e[2] then out[#out + 1] = e[1]; out[#out + 1] = e[2][2] end
  end
end
return out
