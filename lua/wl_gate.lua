-- wl_gate: the waitlist's state around closing the shards' gates. The gates
-- (fg:{SKU#s}:wlopen) make reserve refuse while buyers wait; the promoter
-- opens the SKU again once the queue is empty, with a re-check so that a buyer
-- who joins meanwhile gets the gates set again.
--
-- KEYS[1] fg:{wl:SKU}:queue   KEYS[2] fg:{wl:SKU}:state
-- ARGV[1] 'close' (queue empty? then state=closing, return 1)
--       | 'closed' (still closing? then done, return 1; a join reopened it: 0)
local queue, state = KEYS[1], KEYS[2]
local op = ARGV[1]
if op == 'close' then
  if redis.call('ZCARD', queue) > 0 then return 0 end
  if not redis.call('GET', state) then return 0 end
  redis.call('SET', state, 'closing')
  return 1
elseif op == 'closed' then
  if redis.call('GET', state) == 'closing' then
    redis.call('DEL', state)
    return 1
  end
  return 0
end
return redis.error_reply('unknown op')
