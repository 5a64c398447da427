-- Fixed window and sliding-window counter, one or more requests.
--
-- Windows are aligned on the epoch of the server's clock: window index w = floor(now / P).
-- now is the server's TIME in us; P (ns) arrives as (us, ns 0..999) so that all arithmetic
-- stays in exact integers below 2^53 (P >= 1 ms keeps w * (P mod 1000) exact too).
-- KEYS[i]   state of request i: "w:count" (fixed) or "w:count:previous count" (sliding)
-- ARGV[1]   "fixed" or "sliding";  ARGV[2,3] period P as (us, ns);  ARGV[4] limit
-- ARGV[4+i] cost of request i
-- Reply: now (us), then per request: admitted (0/1), count in this window before the request,
-- previous window's count (sliding; 0 for fixed), time since the window start as (us, ns).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local sliding = ARGV[1] == 'sliding'
local pu, pr, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local p = pu * 1000 + pr

-- w from a double estimate, then made exact with the remainder now*1000 - w*P in (us, ns).
local w = math.floor(now / (p / 1000))
local b = w * pr
local bq = math.floor(b / 1000)
local eu, er = now - w * pu - bq, bq * 1000 - b
if er < 0 then
  eu, er = eu - 1, er + 1000
end
while eu < 0 do
  w, eu, er = w - 1, eu + pu, er + pr
  if er >= 1000 then
    eu, er = eu + 1, er - 1000
  end
end
while eu > pu or (eu == pu and er >= pr) do
  w, eu, er = w + 1, eu - pu, er - pr
  if er < 0 then
    eu, er = eu - 1, er + 1000
  end
end

local left = (pu - eu) * 1000 + (pr - er)  -- ns until this window ends
local ttl = math.floor(left / 1000000) + 2
if sliding then
  ttl = ttl + math.floor(p / 1000000) + 1
end
local out = {now}
-- A batch often holds many requests for one hot key: each key is read once and written once.
local counts, prevs, changed, order = {}, {}, {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local cost = tonumber(ARGV[4 + i])
  local cur, prev = counts[key], prevs[key]
  if cur == nil then
    cur, prev = 0, 0
    local s = redis.call('GET', key)
    if s then
      local a, c, d = string.match(s, '^(%d+):(%d+):?(%d*)$')
      local sw = tonumber(a)
      if sw == w then
        cur, prev = tonumber(c), tonumber(d) or 0
      elseif sliding and sw == w - 1 then
        prev = tonumber(c)
      end
    end
    counts[key], prevs[key] = cur, prev
  end
  local ok
  if sliding then
    ok = not (prev * (left / p) + cur + cost > limit)
  else
    ok = cur + cost <= limit
  end
  if ok then
    counts[key] = cur + cost
    if not changed[key] then
      changed[key] = true
      order[#order + 1] = key
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = cur
  out[#out + 1] = prev
  out[#out + 1] = eu
  out[#out + 1] = er
end
for _, key in ipairs(order) do
  if sliding then
    redis.call('SET', key, string.format('%d:%d:%d', w, counts[key], prevs[key]), 'PX', ttl)
  else
    redis.call('SET', key, string.format('%d:%d', w, counts[key]), 'PX', ttl)
  end
end
return out
