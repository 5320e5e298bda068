"""The Lua scripts of RedisLimiter (redis.py): LocalLimiter's rules (local.py, fair.py) run inside Redis.

Redis runs each script atomically and the scripts read the clock with `TIME`, so client clocks never matter.
Every script takes KEYS[1] = the key's limit hash and KEYS[2] = its fair-share hash, and, first, the pacing
arguments ARGV[1..7] = given rpm, given tpm ("" when not given), margin, burst seconds, probe slots, TTL,
rate window:

* ACQUIRE   ARGV[8] = probe timeout, [9] probe poll, [10] batch ("" for none: no fair share), [11] its
            weight, [12..15] fair.QUANTUM, SLACK, MAX_FAIR_WAIT, IDLE_SECONDS, [16] n, [17..] the tokens of
            the n senders asking, oldest first, then of the permits asked ahead (lines.py) -> {granted,
            wait}: the first `granted` were reserved (as that many calls for one request each would have,
            one after the other), and the next sender may ask again in `wait` seconds (a decimal string;
            "0" when every sender was granted). A permit ahead is granted only when it waits for nothing
            (budget, fair share) and leaves the key's buckets at least half full, and never while probing.
* SETTLE    ARGV[8] = "1" to refund, [9] name, then 9 per answer, in the order they came: reserved, used
            ("" unknown), kind ("1" an answer with headers, "0" without, "a" a permit ahead taken by a
            sender of `used` tokens: only the difference counts, "g" a permit given back: its request and
            tokens return), limit, remaining and reset (seconds) of requests then tokens ("" when absent)
            -> "ok". The state is read once and written once.
* COOLDOWN  ARGV[8] = seconds -> seconds until the (possibly longer, already set) cooldown ends.
* SNAPSHOT  -> [now, learned rpm, learned tpm, seen, cool, sent_r, sent_t, sent_at, tat_r, tat_t]
            (nil where unset), then a list [batch, requests/s, batch, requests/s, ...]; changes nothing.

Needs Redis >= 5 (scripts that write after reading TIME).
"""

from __future__ import annotations

_COMMON = """
local function num(v) if v then return tonumber(v) end return nil end
local function fmt(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key = KEYS[1]
local rpm_given, tpm_given = num(ARGV[1]), num(ARGV[2])
local margin, burst, probe_max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local function in_force(given, learned)
  if given and (not learned or given <= learned) then return given end
  return learned
end
local function rate(limit) return limit * margin / 60 end
local function wait_for(tat, cost, limit)
  tat = tat or (now + burst)
  return math.max(tat, now) - now - (burst - math.min(cost / rate(limit), burst))
end
local function charge(tat, cost, limit)
  tat = tat or (now + burst)
  return math.max(tat, now) + math.min(cost, limit) / rate(limit)
end
local function tighten(tat, limit, remaining, reset)
  tat = tat or (now + burst)
  return math.max(tat, now + burst + reset - remaining / rate(limit))
end
local function decay(at) return math.exp(-math.max(0, now - (at or now)) / window) end
"""

# Fair share (fair.py's FairShare, over the hash KEYS[2]: `t:<batch>` tag, `w:<batch>` waiting until,
# `a:<batch>` asked at, `r:<batch>`/`ra:<batch>` send rate and when it was last fed, `clock`). Read once
# per call (`fair_read`), asked once per request (`fair_turn`, `fair_granted` in memory), written once.
_FAIR = """
local fkey = KEYS[2]
local batch, weight = ARGV[10], tonumber(ARGV[11])
local quantum, slack, max_fair_wait, idle = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]),
                                             tonumber(ARGV[15])
local fair_clock, fair_floor, fair_tag, fair_wait, fair_rate, fair_rate_at = 0, nil, nil, nil, nil, nil
-- The batches' state: forget the idle ones; the lowest tag of the others waiting is the floor.
local function fair_read()
  local all = redis.call('HGETALL', fkey)
  local tags, waits, asked = {}, {}, {}
  fair_rate = 0
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    local kind, b = string.match(f, '^(%a+):(.*)$')
    if kind == 't' then tags[b] = v elseif kind == 'w' then waits[b] = v
    elseif kind == 'a' then asked[b] = v elseif f == 'clock' then fair_clock = v
    elseif b == batch and kind == 'r' then fair_rate = v
    elseif b == batch and kind == 'ra' then fair_rate_at = v end
  end
  for b, at in pairs(asked) do
    if b ~= batch and now - at > idle then
      redis.call('HDEL', fkey, 't:' .. b, 'w:' .. b, 'a:' .. b, 'r:' .. b, 'ra:' .. b)
      tags[b], waits[b] = nil, nil
    end
  end
  for b, till in pairs(waits) do
    if b ~= batch and till > now and tags[b] and (not fair_floor or tags[b] < fair_floor) then
      fair_floor = tags[b]
    end
  end
  fair_tag, fair_wait = tags[batch], waits[batch]
end
-- Where `batch` stands for one request of `cost`: its tag, and the wait (at least `wait`, the budget's).
local function fair_turn(cost, wait)
  local tag, mine = fair_tag or fair_clock, fair_wait or 0
  if mine <= now then tag = math.max(tag, (fair_floor or fair_clock) - quantum) end
  if fair_floor and cost > 0 and tag - fair_floor > quantum then
    wait = math.max(wait, math.min(math.max(cost, 0.001), max_fair_wait))
  end
  fair_tag = tag
  if wait > 1e-6 then fair_wait = math.max(mine, now + wait + slack) end
  return tag, wait
end
-- `batch` got one request of `cost`: its tag moves on by cost / weight; its send rate is fed.
local function fair_granted(cost, tag)
  fair_rate = fair_rate * decay(fair_rate_at) + 1 / window
  fair_rate_at = now
  fair_clock = math.max(fair_clock, tag)
  fair_tag = tag + cost / weight
end
local function fair_write(granted)
  local f = {'t:' .. batch, fmt(fair_tag), 'a:' .. batch, fmt(now)}
  if fair_wait then table.insert(f, 'w:' .. batch); table.insert(f, fmt(fair_wait)) end
  if granted > 0 then
    for _, v in ipairs({'clock', fmt(fair_clock), 'r:' .. batch, fmt(fair_rate), 'ra:' .. batch, fmt(now)}) do
      table.insert(f, v)
    end
  end
  redis.call('HSET', fkey, unpack(f))
  redis.call('EXPIRE', fkey, ttl)
end
"""


ACQUIRE = (
    _COMMON
    + _FAIR
    + """
local probe_timeout, probe_poll = tonumber(ARGV[8]), tonumber(ARGV[9])
local s = redis.call('HMGET', key, 'cool', 'rpm', 'tpm', 'seen', 'probes', 'probe_at',
                     'tat_r', 'tat_t', 'sent_r', 'sent_t', 'sent_at')
local cool = num(s[1])
if cool and cool > now then return {0, fmt(cool - now)} end
local rpm, tpm = in_force(rpm_given, num(s[2])), in_force(tpm_given, num(s[3]))
local probing = s[4] ~= '1' and not rpm and not tpm
local probes = num(s[5]) or 0
if probing and now - (num(s[6]) or 0) >= probe_timeout then probes = 0 end
local tat_r, tat_t = num(s[7]), num(s[8])
local dirty = false
if rpm and not tat_r then tat_r = now + burst; dirty = true end -- a new bucket starts empty
if tpm and not tat_t then tat_t = now + burst; dirty = true end
local fair = batch ~= ''
if fair then fair_read() end
local sent_r, sent_t = (num(s[9]) or 0) * decay(num(s[11])), (num(s[10]) or 0) * decay(num(s[11]))
local senders = tonumber(ARGV[16])
local granted, wait, asked = 0, 0, false
for i = 17, #ARGV do -- one request per token count, in order, until one must wait
  local tokens, ahead = tonumber(ARGV[i]), i - 16 > senders
  if ahead and (probing or (rpm and charge(tat_r, 1, rpm) - now > burst / 2)
                or (tpm and charge(tat_t, tokens, tpm) - now > burst / 2)) then break end
  if probing and probes >= probe_max then wait = probe_poll; break end
  if rpm then wait = math.max(wait, wait_for(tat_r, 1, rpm)) end
  if tpm then wait = math.max(wait, wait_for(tat_t, tokens, tpm)) end
  local cost, tag = 0, 0
  if fair then
    if rpm then cost = 1 / rate(rpm) end
    if tpm then cost = math.max(cost, math.min(tokens, tpm) / rate(tpm)) end
    local was_tag, was_wait = fair_tag, fair_wait
    tag, wait = fair_turn(cost, wait)
    if ahead and wait > 1e-6 then fair_tag, fair_wait, wait = was_tag, was_wait, 0; break end
    asked = true
  end
  if wait > 1e-6 then break end
  wait = 0
  granted = granted + 1
  sent_r, sent_t = sent_r + 1 / window, sent_t + tokens / window
  if rpm then tat_r = charge(tat_r, 1, rpm) end
  if tpm then tat_t = charge(tat_t, tokens, tpm) end
  if probing then probes = probes + 1 end
  if fair then fair_granted(cost, tag) end
end
local f = {}
if granted > 0 then
  f = {'sent_r', fmt(sent_r), 'sent_t', fmt(sent_t), 'sent_at', fmt(now)}
  if probing then
    table.insert(f, 'probes'); table.insert(f, probes)
    table.insert(f, 'probe_at'); table.insert(f, fmt(now))
  end
end
if (dirty or granted > 0) and tat_r then table.insert(f, 'tat_r'); table.insert(f, fmt(tat_r)) end
if (dirty or granted > 0) and tat_t then table.insert(f, 'tat_t'); table.insert(f, fmt(tat_t)) end
if #f > 0 then
  redis.call('HSET', key, unpack(f))
  redis.call('EXPIRE', key, ttl)
end
if asked then fair_write(granted) end
if wait <= 1e-6 then wait = 0 end
return {granted, fmt(wait)}
"""
)

SETTLE = (
    _COMMON
    + """
local s = redis.call('HMGET', key, 'rpm', 'tpm', 'seen', 'probes', 'tat_r', 'tat_t', 'sent_t', 'sent_at',
                     'sent_r')
local learned_r, learned_t, seen, probes = num(s[1]), num(s[2]), s[3] == '1', num(s[4]) or 0
local tat_r, tat_t, sent_t, sent_at, sent_r = num(s[5]), num(s[6]), num(s[7]), num(s[8]), num(s[9])
local refund = ARGV[8] == '1'
local out = {name = ARGV[9]}
-- A permit given back: its tokens and its request return to the buckets, and leave the send rates.
local function give_back(tokens)
  local rpm, tpm = in_force(rpm_given, learned_r), in_force(tpm_given, learned_t)
  if rpm and tat_r then tat_r = math.max(tat_r - 1 / rate(rpm), now); out.tat_r = fmt(tat_r) end
  if tpm and tat_t then
    tat_t = math.max(tat_t - math.min(tokens, tpm) / rate(tpm), now); out.tat_t = fmt(tat_t)
  end
  local d = decay(sent_at)
  sent_r = math.max(0, (sent_r or 0) * d - 1 / window)
  sent_t, sent_at = math.max(0, (sent_t or 0) * d - tokens / window), now
  out.sent_r, out.sent_t, out.sent_at = fmt(sent_r), fmt(sent_t), fmt(now)
end
for i = 10, #ARGV, 9 do -- one answer per 9 arguments, in the order they came
  local reserved, used, kind = tonumber(ARGV[i]), num(ARGV[i + 1]), ARGV[i + 2]
  if not seen and kind ~= 'a' then probes = math.max(0, probes - 1); out.probes = probes end
  if kind == 'g' then give_back(reserved); used = nil end
  if kind == '1' then seen = true; out.seen = '1' end
  if num(ARGV[i + 3]) then learned_r = num(ARGV[i + 3]); out.rpm = ARGV[i + 3] end
  if num(ARGV[i + 4]) then learned_t = num(ARGV[i + 4]); out.tpm = ARGV[i + 4] end
  local rpm, tpm = in_force(rpm_given, learned_r), in_force(tpm_given, learned_t)
  local new_t = nil
  if tpm and used and tat_t then
    local delta = math.min(used, tpm) - math.min(reserved, tpm)
    if delta > 0 or refund then
      new_t = math.max(math.max(tat_t, now) + delta / rate(tpm), now)
      sent_t = (sent_t or 0) * decay(sent_at) + delta / window
      sent_at = now
      out.sent_t, out.sent_at = fmt(sent_t), fmt(now)
    end
  end
  local rem_r, reset_r, rem_t, reset_t = num(ARGV[i + 5]), num(ARGV[i + 6]), num(ARGV[i + 7]),
                                         num(ARGV[i + 8])
  if rpm and rem_r and reset_r then tat_r = tighten(tat_r, rpm, rem_r, reset_r); out.tat_r = fmt(tat_r) end
  if tpm and rem_t and reset_t then new_t = tighten(new_t or tat_t, tpm, rem_t, reset_t) end
  if new_t then tat_t = new_t; out.tat_t = fmt(tat_t) end
end
local f = {}
for k, v in pairs(out) do table.insert(f, k); table.insert(f, v) end
redis.call('HSET', key, unpack(f))
redis.call('EXPIRE', key, ttl)
return 'ok'
"""
)

COOLDOWN = (
    _COMMON
    + """
local s = redis.call('HMGET', key, 'cool', 'tat_r', 'tat_t')
local cool = math.max(num(s[1]) or 0, now + tonumber(ARGV[8]))
local restart = cool + burst
redis.call('HSET', key, 'cool', fmt(cool), 'tat_r', fmt(math.max(num(s[2]) or restart, restart)),
           'tat_t', fmt(math.max(num(s[3]) or restart, restart)))
redis.call('EXPIRE', key, math.max(ttl, math.ceil(cool - now) + 1))
return fmt(cool - now)
"""
)

SNAPSHOT = (
    _COMMON
    + """
local s = redis.call('HMGET', key, 'rpm', 'tpm', 'seen', 'cool', 'sent_r', 'sent_t', 'sent_at',
                     'tat_r', 'tat_t')
local rates = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local b = string.match(all[i], '^r:(.*)$')
  if b then
    local at = num(redis.call('HGET', KEYS[2], 'ra:' .. b))
    table.insert(rates, b)
    table.insert(rates, fmt(tonumber(all[i + 1]) * decay(at)))
  end
end
return {fmt(now), s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], rates}
"""
)
