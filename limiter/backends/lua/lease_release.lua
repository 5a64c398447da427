-- Release a lease taken by lease_acquire.lua; releasing twice or after expiry changes nothing.
--
-- KEYS[1] leases (sorted set);  KEYS[2] units held;  ARGV[1] cost;  ARGV[2] lease id
-- Reply: 1 if the lease was live and is now released, else 0.

if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2]) == 0 then
  return 0
end
local held = tonumber(redis.call('GET', KEYS[2]) or '0') - tonumber(ARGV[1])
if held <= 0 or redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('SET', KEYS[2], held, 'KEEPTTL')
end
return 1
