-- Quota allocation across replicas: one replica's exchange for one RLQS bucket.
--
-- KEYS[1] the bucket's instances (hash): field "<replica>/<instance>", value
--         "<expires at, ms on the Redis clock> <kind> <number>", kind "d" a measured demand
--         (requests/s), "n" an instance not measured yet, "h" the grant (requests/s) still
--         held by an instance whose stream ended
-- ARGV[1] replica id;  ARGV[2] most entries the bucket keeps
-- ARGV[3..] this replica's instances, three items each: instance, ms until its entry
--         expires (its lease), "<kind> <number>"
-- This replica's entries are replaced by the ones given (an instance it no longer names
-- is gone); expired entries of any replica are removed; new entries beyond ARGV[2] are
-- not kept (their replica still counts them itself).
-- Reply: the other replicas' live entries, flat: field, value, field, value...

local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local mine = ARGV[1] .. '/'
local limit = tonumber(ARGV[2])
local others = {}
local count = 0
local last = now
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  local expires = tonumber(string.match(value, '^(%d+) '))
  if field:sub(1, #mine) == mine or expires == nil or expires <= now then
    redis.call('HDEL', KEYS[1], field)
  else
    others[#others + 1] = field
    others[#others + 1] = value
    count = count + 1
    if expires > last then
      last = expires
    end
  end
end
for i = 3, #ARGV - 2, 3 do
  if count >= limit then
    break
  end
  local expires = now + tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], mine .. ARGV[i], expires .. ' ' .. ARGV[i + 2])
  count = count + 1
  if expires > last then
    last = expires
  end
end
if count > 0 then
  redis.call('PEXPIREAT', KEYS[1], last + 1)
end
return others
