-- Shared adaptive limit: one sync step of one replica.
--
-- KEYS[1] reports from all replicas (list of "latency_ns:ok" items and "d:admitted:rejected")
-- KEYS[2] leader lease (replica id, expires unless renewed);  KEYS[3] published limit
-- ARGV[1] replica id;  ARGV[2] lease ms;  ARGV[3] max reports kept
-- ARGV[4] limit the leader computed ("" for none);  ARGV[5..] new reports
-- The leader takes (and clears) every report to feed its controller and publishes its
-- limit; the others only add reports and read the published limit.
-- Reply: {is leader (0/1), published limit or false, reports taken by the leader...}

if #ARGV > 4 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 5))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local lease = tonumber(ARGV[2])
local leader = redis.call('GET', KEYS[2])
if not leader then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', lease)
  leader = ARGV[1]
elseif leader == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], lease)
end
if leader == ARGV[1] and ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4])
end
local out = {0, redis.call('GET', KEYS[3])}
if leader == ARGV[1] then
  out[1] = 1
  local taken = redis.call('LRANGE', KEYS[1], 0, -1)
  redis.call('DEL', KEYS[1])
  for i = 1, #taken do
    out[#out + 1] = taken[i]
  end
end
return out
