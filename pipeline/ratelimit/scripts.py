"""The Lua scripts of RedisLimiter (redis.py): LocalLimiter's rules (local.py, fair.py) run inside Redis.

Redis runs each script atomically and the scripts read the clock with `TIME`, so client clocks never matter.
Every script takes KEYS[1] = the key's limit hash and KEYS[2] = its fair-share hash, and, first, the pacing
arguments ARGV[1..7] = given rpm, given tpm ("" when not given), margin, burst seconds, probe slots, TTL,
rate window:

* ACQUIRE   ARGV[8] = tokens, [9] probe timeout, [10] probe poll, [11] batch ("" for none: no fair share),
            [12] its weight, [13..16] fair.QUANTUM, SLACK, MAX_FAIR_WAIT, IDLE_SECONDS -> "0" when the
            request was reserved, else the seconds to wait before trying again (as a decimal string); then
            only the batch's place in the fair share changes.
* SETTLE    ARGV[8] = reserved, [9] used ("" unknown), [10] "1" when the answer had headers, [11..16] =
            limit, remaining and reset (seconds) of requests then tokens ("" when absent), [17] "1"
            to refund, [18] name -> "ok".
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
# `a:<batch>` asked at, `r:<batch>`/`ra:<batch>` send rate and when it was last fed, `clock`).
_FAIR = """
local fkey = KEYS[2]
local batch, weight = ARGV[11], tonumber(ARGV[12])
local quantum, slack, max_fair_wait, idle = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]),
                                             tonumber(ARGV[16])
local fair_clock = 0
-- Where `batch` stands: its tag, and the wait (at least `wait`, the budget's) it is told.
local function fair_turn(cost, wait)
  local all = redis.call('HGETALL', fkey)
  local tags, waits, asked = {}, {}, {}
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    local kind, b = string.match(f, '^(%a+):(.*)$')
    if kind == 't' then tags[b] = v elseif kind == 'w' then waits[b] = v
    elseif kind == 'a' then asked[b] = v elseif f == 'clock' then fair_clock = v end
  end
  for b, at in pairs(asked) do
    if b ~= batch and now - at > idle then
      redis.call('HDEL', fkey, 't:' .. b, 'w:' .. b, 'a:' .. b, 'r:' .. b, 'ra:' .. b)
      tags[b], waits[b] = nil, nil
    end
  end
  local floor = nil
  for b, till in pairs(waits) do
    if b ~= batch and till > now and tags[b] and (not floor or tags[b] < floor) then floor = tags[b] end
  end
  local tag, mine = tags[batch] or fair_clock, waits[batch] or 0
  if mine <= now then tag = math.max(tag, (floor or fair_clock) - quantum) end
  if floor and cost > 0 and tag - floor > quantum then
    wait = math.max(wait, math.min(math.max(cost, 0.001), max_fair_wait))
  end
  local f = {'t:' .. batch, fmt(tag), 'a:' .. batch, fmt(now)}
  if wait > 1e-6 then
    table.insert(f, 'w:' .. batch); table.insert(f, fmt(math.max(mine, now + wait + slack)))
  end
  redis.call('HSET', fkey, unpack(f))
  redis.call('EXPIRE', fkey, ttl)
  return tag, wait
end
-- `batch` got one request of `cost`: its tag moves on by cost / weight; its send rate is fed.
local function fair_granted(cost, tag)
  local r = redis.call('HMGET', fkey, 'r:' .. batch, 'ra:' .. batch)
  local sent = (num(r[1]) or 0) * decay(num(r[2])) + 1 / window
  redis.call('HSET', fkey, 'clock', fmt(math.max(fair_clock, tag)), 't:' .. batch, fmt(tag + cost / weight),
             'r:' .. batch, fmt(sent), 'ra:' .. batch, fmt(now))
  redis.call('EXPIRE', fkey, ttl)
end
"""


ACQUIRE = (
    _COMMON
    + _FAIR
    + """
local tokens, probe_timeout, probe_poll = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local s = redis.call('HMGET', key, 'cool', 'rpm', 'tpm', 'seen', 'probes', 'probe_at',
                     'tat_r', 'tat_t', 'sent_r', 'sent_t', 'sent_at')
local cool = num(s[1])
if cool and cool > now then return fmt(cool - now) end
local rpm, tpm = in_force(rpm_given, num(s[2])), in_force(tpm_given, num(s[3]))
local probing = s[4] ~= '1' and not rpm and not tpm
local probes = num(s[5]) or 0
if probing and now - (num(s[6]) or 0) >= probe_timeout then probes = 0 end
if probing and probes >= probe_max then return fmt(probe_poll) end
local tat_r, tat_t = num(s[7]), num(s[8])
if (rpm and not tat_r) or (tpm and not tat_t) then -- a new bucket starts empty
  if rpm and not tat_r then tat_r = now + burst; redis.call('HSET', key, 'tat_r', fmt(tat_r)) end
  if tpm and not tat_t then tat_t = now + burst; redis.call('HSET', key, 'tat_t', fmt(tat_t)) end
  redis.call('EXPIRE', key, ttl)
end
local wait = 0
if rpm then wait = math.max(wait, wait_for(tat_r, 1, rpm)) end
if tpm then wait = math.max(wait, wait_for(tat_t, tokens, tpm)) end
local fair = ARGV[11] ~= ''
local cost, tag = 0, 0
if fair then
  if rpm then cost = 1 / rate(rpm) end
  if tpm then cost = math.max(cost, math.min(tokens, tpm) / rate(tpm)) end
  tag, wait = fair_turn(cost, wait)
end
if wait > 1e-6 then return fmt(wait) end
local d = decay(num(s[11]))
local f = {'sent_r', fmt((num(s[9]) or 0) * d + 1 / window),
           'sent_t', fmt((num(s[10]) or 0) * d + tokens / window), 'sent_at', fmt(now)}
if rpm then table.insert(f, 'tat_r'); table.insert(f, fmt(charge(tat_r, 1, rpm))) end
if tpm then table.insert(f, 'tat_t'); table.insert(f, fmt(charge(tat_t, tokens, tpm))) end
if probing then
  table.insert(f, 'probes'); table.insert(f, probes + 1)
  table.insert(f, 'probe_at'); table.insert(f, fmt(now))
end
redis.call('HSET', key, unpack(f))
redis.call('EXPIRE', key, ttl)
if fair then fair_granted(cost, tag) end
return '0'
"""
)

SETTLE = (
    _COMMON
    + """
local reserved, used = tonumber(ARGV[8]), num(ARGV[9])
local s = redis.call('HMGET', key, 'rpm', 'tpm', 'seen', 'probes', 'tat_r', 'tat_t', 'sent_t', 'sent_at')
local f = {'name', ARGV[18]}
if s[3] ~= '1' then
  table.insert(f, 'probes'); table.insert(f, math.max(0, (num(s[4]) or 0) - 1))
end
if ARGV[10] == '1' then table.insert(f, 'seen'); table.insert(f, '1') end
local learned_r, learned_t = num(ARGV[11]) or num(s[1]), num(ARGV[12]) or num(s[2])
if num(ARGV[11]) then table.insert(f, 'rpm'); table.insert(f, ARGV[11]) end
if num(ARGV[12]) then table.insert(f, 'tpm'); table.insert(f, ARGV[12]) end
local rpm, tpm = in_force(rpm_given, learned_r), in_force(tpm_given, learned_t)
local tat_r, tat_t = num(s[5]), num(s[6])
local new_r, new_t = nil, nil
if tpm and used and tat_t then
  local delta = math.min(used, tpm) - math.min(reserved, tpm)
  if delta > 0 or ARGV[17] == '1' then
    new_t = math.max(math.max(tat_t, now) + delta / rate(tpm), now)
    local sent_t = (num(s[7]) or 0) * decay(num(s[8])) + delta / window
    table.insert(f, 'sent_t'); table.insert(f, fmt(sent_t))
    table.insert(f, 'sent_at'); table.insert(f, fmt(now))
  end
end
local rem_r, reset_r, rem_t, reset_t = num(ARGV[13]), num(ARGV[14]), num(ARGV[15]), num(ARGV[16])
if rpm and rem_r and reset_r then new_r = tighten(tat_r, rpm, rem_r, reset_r) end
if tpm and rem_t and reset_t then new_t = tighten(new_t or tat_t, tpm, rem_t, reset_t) end
if new_r then table.insert(f, 'tat_r'); table.insert(f, fmt(new_r)) end
if new_t then table.insert(f, 'tat_t'); table.insert(f, fmt(new_t)) end
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
