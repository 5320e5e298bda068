"""RedisLimiter: one budget per key for every process on every machine that shares a Redis.

The rules are LocalLimiter's (local.py); the state lives in one Redis hash per key,
`pipeline:limit:<sha1 of str(LimitKey)>`, and changes only inside Lua scripts, which Redis runs
atomically and which read the clock with `TIME` (client clocks never matter). The hash expires
TTL seconds after it was last touched, learned limits included.

Hash fields: `tat_r`/`tat_t` (GCRA times of the request and token buckets), `cool` (cooldown end),
`rpm`/`tpm` (learned limits), `seen` ("1" once an answer with headers came back), `probes`/`probe_at`
(probe slots in use), `sent_r`/`sent_t`/`sent_at` (moving averages of the send rate), `name`
(str(LimitKey), for people reading Redis). Times are Redis server seconds.

Every script takes KEYS[1] = the hash and, first, the pacing arguments
ARGV[1..7] = given rpm, given tpm ("" when not given), margin, burst seconds, probe slots, TTL, rate window:

* ACQUIRE   ARGV[8] = tokens, [9] probe timeout, [10] probe poll -> "0" when the request was reserved,
            else the seconds to wait before trying again (as a decimal string); changes nothing then.
* SETTLE    ARGV[8] = reserved, [9] used ("" unknown), [10] "1" when the answer had headers, [11..16] =
            limit, remaining and reset (seconds) of requests then tokens ("" when absent), [17] "1"
            to refund, [18] name -> "ok".
* COOLDOWN  ARGV[8] = seconds -> seconds until the (possibly longer, already set) cooldown ends.
* SNAPSHOT  -> [now, learned rpm, learned tpm, seen, cool, sent_r, sent_t, sent_at, tat_r, tat_t]
            (nil where unset); changes nothing.

The client sleeps the wait ACQUIRE returns and asks again; in each process only the head of a key's
FIFO queue asks, so Redis sees one caller per process and key. `settle` and `cooldown` are synchronous
(the engine calls them so): they run the script in a background task, and `cooldown` also holds this
process's senders at once. `snapshot` is async. `aclose` waits for those tasks, then closes the
connections. Like its Redis client, a RedisLimiter belongs to the event loop that first uses it.
Needs Redis >= 5 (scripts that write after reading TIME).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from pipeline.ratelimit.rules import (
    BURST_SECONDS,
    MARGIN,
    MIN_SLEEP,
    PROBE_IN_FLIGHT,
    PROBE_POLL,
    PROBE_TIMEOUT,
    RATE_WINDOW,
    LimitKey,
    Limits,
    LimitTable,
    Pace,
    RateHeaders,
    describe,
    in_force,
)

log = logging.getLogger(__name__)

#: Seconds an untouched key's state (learned limits included) stays in Redis.
DEFAULT_TTL = 3600
#: Connections per limiter; settles beyond that queue for a free one instead of opening more.
MAX_CONNECTIONS = 16
#: Seconds any one Redis command may take (connect, send, answer) before it counts as failed.
REDIS_TIMEOUT = 5.0
#: Seconds between tries while Redis cannot be reached.
REDIS_RETRY_SECONDS = 1.0

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

ACQUIRE = (
    _COMMON
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
return {fmt(now), s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9]}
"""
)


def redis_key(key: LimitKey) -> str:
    """The hash holding `key`'s state."""
    return "pipeline:limit:" + hashlib.sha1(str(key).encode()).hexdigest()


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)


class RedisLimiter:
    """Paces every process sharing `url` to one budget per key. Use `async with` or call `aclose`."""

    def __init__(
        self,
        url: str,
        limits: LimitTable | None = None,
        *,
        margin: float = MARGIN,
        burst_seconds: float = BURST_SECONDS,
        probe_in_flight: int = PROBE_IN_FLIGHT,
        refund: bool = True,
        ttl: int = DEFAULT_TTL,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.limits = limits or LimitTable()
        self.pace = Pace(margin, burst_seconds, probe_in_flight, refund)
        self.ttl = ttl
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            timeout=REDIS_TIMEOUT,  # waiting for a free connection of the pool
        )
        self._redis = Redis.from_pool(pool)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._settle = self._redis.register_script(SETTLE)
        self._cooldown = self._redis.register_script(COOLDOWN)
        self._snapshot = self._redis.register_script(SNAPSHOT)
        self._locks: dict[LimitKey, asyncio.Lock] = {}
        self._holds: dict[LimitKey, float] = {}  #: local cooldown ends, time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the settles and cooldowns under way, then close the connections."""
        await self.drain()
        await self._redis.aclose()

    async def drain(self) -> None:
        """Wait until every settle and cooldown issued so far has reached Redis (or failed)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _pacing(self, key: LimitKey) -> list[str]:
        given = self.limits.for_model(key.model)
        pace = self.pace
        return [
            _arg(given.rpm),
            _arg(given.tpm),
            repr(pace.margin),
            repr(pace.burst),
            str(pace.probe_in_flight),
            str(self.ttl),
            repr(RATE_WINDOW),
        ]

    async def acquire(self, key: LimitKey, tokens: int) -> None:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        name = redis_key(key)
        args = [*self._pacing(key), str(max(0, tokens)), repr(PROBE_TIMEOUT), repr(PROBE_POLL)]
        async with lock:
            while True:
                held = self._holds.get(key, 0.0) - time.monotonic()
                if held > 0:
                    await asyncio.sleep(held)
                    continue
                try:
                    wait = float(await self._acquire(keys=[name], args=args))
                except (RedisError, OSError) as exc:
                    # Sending without the shared budget could overrun it for every process: wait for Redis.
                    wait = REDIS_RETRY_SECONDS
                    log.warning("rate limiter: Redis unavailable (%r); retrying in %gs", exc, wait)
                else:
                    if wait <= 0:
                        return
                await asyncio.sleep(max(wait, MIN_SLEEP))

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        rh = RateHeaders.parse(headers)
        args = [
            *self._pacing(key),
            str(max(0, reserved)),
            _arg(used),
            "1" if rh.seen else "0",
            _arg(rh.limit_requests or None),
            _arg(rh.limit_tokens or None),
            _arg(rh.remaining_requests),
            _arg(rh.reset_requests),
            _arg(rh.remaining_tokens),
            _arg(rh.reset_tokens),
            "1" if self.pace.refund else "0",
            str(key),
        ]
        self._spawn(self._settle_in_redis(key, args))

    async def _settle_in_redis(self, key: LimitKey, args: list[str]) -> None:
        await self._call(self._settle, key, args, "settle")

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._holds[key] = max(self._holds.get(key, 0.0), time.monotonic() + seconds)
        args = [*self._pacing(key), repr(seconds)]
        self._spawn(self._cool(key, args))

    async def snapshot(self, key: LimitKey) -> dict[str, Any]:
        """Like LocalLimiter.snapshot, read from Redis (so it shows every process's sends)."""
        reply = await self._snapshot(keys=[redis_key(key)], args=self._pacing(key))
        values = [None if v is None else float(v) for v in reply]
        now, rpm, tpm, seen, cool, sent_r, sent_t, sent_at, tat_r, tat_t = values
        assert now is not None
        given = self.limits.for_model(key.model)
        learned = Limits(int(rpm) if rpm else None, int(tpm) if tpm else None)
        decay = math.exp(-max(0.0, now - (sent_at or now)) / RATE_WINDOW)
        rpm_now, tpm_now = in_force(given.rpm, learned.rpm)[0], in_force(given.tpm, learned.tpm)[0]
        return describe(
            key,
            given,
            learned,
            probing=seen != 1.0 and rpm_now is None and tpm_now is None,
            cooldown_until=cool if cool is not None and cool > now else None,
            sent_per_second=((sent_r or 0.0) * decay, max(0.0, (sent_t or 0.0) * decay)),
            available=(self.pace.available(tat_r, now, rpm_now), self.pace.available(tat_t, now, tpm_now)),
        )

    async def _cool(self, key: LimitKey, args: list[str]) -> None:
        left = await self._call(self._cooldown, key, args, "record a cooldown for")
        if left is not None:  # another process may have set a longer one: hold this one's senders as long
            self._holds[key] = max(self._holds.get(key, 0.0), time.monotonic() + float(left))

    @staticmethod
    async def _call(script: AsyncScript, key: LimitKey, args: list[str], what: str) -> str | None:
        """Run a background script; a failure is logged (a lost settle or cooldown costs accuracy only)."""
        try:
            return str(await script(keys=[redis_key(key)], args=args))
        except Exception:
            log.warning("could not %s %s in Redis", what, key, exc_info=True)
            return None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
