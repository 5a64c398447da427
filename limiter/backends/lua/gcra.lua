-- GCRA for token bucket, leaky bucket (meter) and leaky bucket (shaper), one or more requests.
--
-- Times are pairs (whole microseconds, nanoseconds 0..999) so every number stays an exact
-- integer below 2^53 in Lua's doubles; the clock is the server's TIME, never the client's.
-- KEYS[i]   state of request i: theoretical arrival time (tat) in ns as a decimal string
-- ARGV[1,2] admission threshold: tau (+ max_wait for a shaper) as (us, ns)
-- ARGV[2i+1, 2i+2]  cost * emission interval of request i as (us, ns)
-- Reply: now (us), then per request: admitted (0/1), max(tat, now) - now as (us, ns).
-- A request is admitted iff max(tat, now) + cost * interval <= now + threshold.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lim_u = now + tonumber(ARGV[1])
local lim_r = tonumber(ARGV[2])
local out = {now}
-- A batch often holds many requests for one hot key: each key is read once and written once.
local tat_u, tat_r, changed, order = {}, {}, {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local tu, tr = tat_u[key], tat_r[key]
  if tu == nil then
    tu, tr = now, 0
    local s = redis.call('GET', key)
    if s then
      local su, sr = tonumber(string.sub(s, 1, -4)), tonumber(string.sub(s, -3))
      if su > now or (su == now and sr > 0) then
        tu, tr = su, sr
      end
    end
    tat_u[key], tat_r[key] = tu, tr
  end
  local nu = tu + tonumber(ARGV[2 * i + 1])
  local nr = tr + tonumber(ARGV[2 * i + 2])
  if nr >= 1000 then
    nu, nr = nu + 1, nr - 1000
  end
  local ok = nu < lim_u or (nu == lim_u and nr <= lim_r)
  if ok then
    if not changed[key] then
      changed[key] = true
      order[#order + 1] = key
    end
    tat_u[key], tat_r[key] = nu, nr
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = tu - now
  out[#out + 1] = tr
end
-- The key is idle (equivalent to absent) once tat has passed: let it expire then.
for _, key in ipairs(order) do
  local nu, nr = tat_u[key], tat_r[key]
  redis.call('SET', key, string.format('%d%03d', nu, nr), 'PX', math.floor((nu - now) / 1000) + 2)
end
return out
