"""RedisBudget: one spend budget per batch for every engine sharing a Redis, changed only in Lua scripts.

The batch's hash `pipeline:spend:<batch id>` holds `spent` (USD every engine settled), and per engine
`r:<worker>` (its reservations in force) and `t:<worker>` (when it last reserved, settled or was observed,
Redis server seconds). A reservation counts while its engine was heard of within STALE_SECONDS: an engine
that died cannot hold the budget for ever. The hash is seeded with the spend the database stored when it
does not exist (a first engine, or Redis restarted empty), and expires TTL seconds after its last use.

* RESERVE  KEYS[1], ARGV = worker, cap, usd, seed, stale, ttl -> "" when reserved, else "spent reserved".
* SETTLE   KEYS[1], ARGV = worker, reserved, spent, seed, ttl -> "ok".
* TOUCH    KEYS[1], ARGV = worker, ttl -> "ok" (an engine with requests in flight, alive).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pipeline.retrying import Policy, call_async, report
from pipeline.spend import Refusal

log = logging.getLogger(__name__)

#: Seconds after which the reservations of an engine not heard of are not counted.
STALE_SECONDS = 120.0
#: Seconds an untouched budget stays in Redis.
TTL = 86400
#: Seconds any one Redis command may take.
REDIS_TIMEOUT = 5.0
#: Seconds between tries while Redis cannot be reached (sending without the shared budget could overrun it).
RETRY_SECONDS = 1.0
#: How a reservation is tried again: as long as Redis cannot be reached, about once a second.
_UNREACHABLE = Policy(
    "spend budget: reserving in Redis",
    retry_on=lambda exc: isinstance(exc, RedisError | OSError),
    first=RETRY_SECONDS,
    cap=RETRY_SECONDS,
)

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then redis.call('HSET', key, 'spent', ARGV[4]) end
"""

RESERVE = (
    _COMMON
    + """
local worker, cap, usd, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local all = redis.call('HGETALL', key)
local fields = {}
for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
local reserved = 0
for name, value in pairs(fields) do
  if string.sub(name, 1, 2) == 'r:' then
    local who = string.sub(name, 3)
    local seen = tonumber(fields['t:' .. who] or '0')
    if who == worker or now - seen <= stale then reserved = reserved + tonumber(value) end
  end
end
local spent = tonumber(fields['spent'] or '0')
redis.call('EXPIRE', key, tonumber(ARGV[6]))
if spent + reserved + usd > cap then return string.format('%.17g %.17g', spent, reserved) end
redis.call('HINCRBYFLOAT', key, 'r:' .. worker, usd)
redis.call('HSET', key, 't:' .. worker, string.format('%.17g', now))
return ''
"""
)

SETTLE = (
    _COMMON
    + """
local worker = ARGV[1]
local left = redis.call('HINCRBYFLOAT', key, 'r:' .. worker, -tonumber(ARGV[2]))
if tonumber(left) < 1e-12 then redis.call('HSET', key, 'r:' .. worker, '0') end
redis.call('HINCRBYFLOAT', key, 'spent', tonumber(ARGV[3]))
redis.call('HSET', key, 't:' .. worker, string.format('%.17g', now))
redis.call('EXPIRE', key, tonumber(ARGV[5]))
return 'ok'
"""
)

TOUCH = """
local t = redis.call('TIME')
if redis.call('EXISTS', KEYS[1]) == 1 then
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  redis.call('HSET', KEYS[1], 't:' .. ARGV[1], string.format('%.17g', now))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 'ok'
"""


def budget_key(batch_id: str) -> str:
    return f"pipeline:spend:{batch_id}"


class RedisBudget:
    """Every batch's spend budget, shared through `url`. Belongs to the event loop that first uses it."""

    def __init__(self, url: str) -> None:
        #: names this process's reservations (not the engine's worker id, which changes if it is buried)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis = Redis.from_url(
            url, decode_responses=True, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)
        self._touch = self._redis.register_script(TOUCH)
        #: the spend the database stored, per batch: seeds a budget Redis does not hold
        self._recorded: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    async def reserve(self, batch_id: str, cap: float, usd: float) -> Refusal | None:
        args = [
            self.worker,
            repr(cap),
            repr(usd),
            repr(self._recorded.get(batch_id, 0.0)),
            repr(STALE_SECONDS),
        ]

        async def reserve() -> str:
            return str(await self._reserve(keys=[budget_key(batch_id)], args=[*args, str(TTL)]))

        reply = await call_async(reserve, _UNREACHABLE)
        if not reply:
            return None
        spent, reserved = (float(x) for x in reply.split())
        return Refusal(spent, reserved, cap)

    def settle(self, batch_id: str, reserved: float, spent: float) -> None:
        seed = repr(self._recorded.get(batch_id, 0.0))
        args = [self.worker, repr(reserved), repr(spent), seed, str(TTL)]
        self._spawn(self._run(self._settle, batch_id, args))

    def observe(self, batch_id: str, recorded: float, others_reserved: float) -> None:
        self._recorded[batch_id] = recorded
        self._spawn(self._run(self._touch, batch_id, [self.worker, str(TTL)]))

    async def _run(self, script: Any, batch_id: str, args: list[str]) -> None:
        try:
            await script(keys=[budget_key(batch_id)], args=args)
        except Exception as exc:  # a lost settle costs accuracy only: the database keeps the true spend
            report(log, f"spend budget: updating {batch_id} in Redis", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
