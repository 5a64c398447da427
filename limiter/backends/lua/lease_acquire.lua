-- Concurrency limit with expiring leases, one or more requests.
--
-- KEYS[2i-1] leases of request i's key: sorted set, member "<cost>:<lease id>", score = expiry (us)
-- KEYS[2i]   units held under that key (sum of the costs of live leases); same hash slot
-- ARGV[1] lease lifetime (us);  ARGV[2] limit;  ARGV[2i+1] cost (0 = only count);  ARGV[2i+2] id
-- Expired leases (holders that crashed or never released) are dropped before deciding.
-- Reply: now (us), then per request: admitted (0/1), units held after the decision.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {now}
for i = 1, #KEYS / 2 do
  local leases, held_key = KEYS[2 * i - 1], KEYS[2 * i]
  local held = tonumber(redis.call('GET', held_key) or '0')
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #expired > 0 then
    for _, m in ipairs(expired) do
      held = held - tonumber(string.match(m, '^(%d+):'))
    end
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    if held < 0 then
      held = 0
    end
    redis.call('SET', held_key, held, 'KEEPTTL')
  end
  local cost = tonumber(ARGV[2 * i + 1])
  local ok = cost > 0 and held + cost <= limit
  if ok then
    held = held + cost
    local ms = math.floor(ttl / 1000) + 2
    redis.call('ZADD', leases, now + ttl, cost .. ':' .. ARGV[2 * i + 2])
    redis.call('SET', held_key, held, 'PX', ms)
    redis.call('PEXPIRE', leases, ms)
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = held
end
return out
