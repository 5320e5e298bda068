"""RedisLimiter: one budget per key for every process on every machine that shares a Redis.

The rules are LocalLimiter's (local.py, and fair.py for the batches' shares); the state lives in two Redis
hashes per key, `pipeline:limit:<sha1 of str(LimitKey)>` and `pipeline:fair:<same sha1>`, and changes only
inside the Lua scripts of scripts.py, which Redis runs atomically and which read the clock with `TIME`
(client clocks never matter). The hashes expire TTL seconds after they were last touched, learned limits
included.

Limit hash fields: `tat_r`/`tat_t` (GCRA times of the request and token buckets), `cool` (cooldown end),
`rpm`/`tpm` (learned limits), `seen` ("1" once an answer with headers came back), `probes`/`probe_at`
(probe slots in use), `sent_r`/`sent_t`/`sent_at` (moving averages of the send rate), `name`
(str(LimitKey), for people reading Redis). Fair hash fields, per batch asking: `t:<batch>` (its tag),
`w:<batch>` (waiting until), `a:<batch>` (last asked), `r:<batch>`/`ra:<batch>` (its send rate); and
`clock`. Times are Redis server seconds.

The client sleeps the wait ACQUIRE returns and asks again; in each process only the head of a key's and
batch's FIFO queue asks, so Redis sees one caller per process, key and batch. `settle` and `cooldown` are
synchronous (the engine calls them so): they run the script in a background task, and `cooldown` also holds
this process's senders at once. `snapshot` is async. `aclose` waits for those tasks, then closes the
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.ratelimit.fair import IDLE_SECONDS, MAX_FAIR_WAIT, QUANTUM, SLACK
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
from pipeline.ratelimit.scripts import ACQUIRE, COOLDOWN, SETTLE, SNAPSHOT

log = logging.getLogger(__name__)

#: Seconds an untouched key's state (learned limits included) stays in Redis.
DEFAULT_TTL = 3600
#: Connections per limiter; settles beyond that queue for a free one instead of opening more.
MAX_CONNECTIONS = 16
#: Seconds any one Redis command may take (connect, send, answer) before it counts as failed.
REDIS_TIMEOUT = 5.0
#: Seconds between tries while Redis cannot be reached.
REDIS_RETRY_SECONDS = 1.0
#: The fair-share arguments of ACQUIRE after the batch and its weight.
_FAIR_ARGS = [repr(QUANTUM), repr(SLACK), repr(MAX_FAIR_WAIT), repr(IDLE_SECONDS)]


def redis_key(key: LimitKey) -> str:
    """The hash holding `key`'s state."""
    return "pipeline:limit:" + hashlib.sha1(str(key).encode()).hexdigest()


def fair_key(key: LimitKey) -> str:
    """The hash holding the fair share of `key` among the batches asking for it."""
    return "pipeline:fair:" + hashlib.sha1(str(key).encode()).hexdigest()


def _keys(key: LimitKey) -> list[str]:
    return [redis_key(key), fair_key(key)]


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
        self._locks: dict[tuple[LimitKey, str | None], asyncio.Lock] = {}
        self._holds: dict[LimitKey, float] = {}  #: local cooldown ends, time.monotonic()
        self._given: dict[LimitKey, Limits] = {}  #: limits given for one key (an account's)
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

    def give(self, key: LimitKey, limits: Limits) -> None:
        self._given[key] = limits

    def _given_for(self, key: LimitKey) -> Limits:
        return self._given.get(key) or self.limits.for_model(key.model)

    def _pacing(self, key: LimitKey) -> list[str]:
        given = self._given_for(key)
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

    async def acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> None:
        lock = self._locks.get((key, batch))
        if lock is None:
            lock = self._locks[(key, batch)] = asyncio.Lock()
        keys = _keys(key)
        args = [*self._pacing(key), str(max(0, tokens)), repr(PROBE_TIMEOUT), repr(PROBE_POLL)]
        args += [batch or "", repr(float(weight)), *_FAIR_ARGS]
        async with lock:
            while True:
                held = self._holds.get(key, 0.0) - time.monotonic()
                if held > 0:
                    await asyncio.sleep(held)
                    continue
                try:
                    wait = float(await self._acquire(keys=keys, args=args))
                except (RedisError, OSError) as exc:
                    # Sending without the shared budget could overrun it for every process: wait for Redis.
                    wait = REDIS_RETRY_SECONDS
                    log.warning("rate limiter: Redis unavailable (%r); retrying in %gs", exc, wait)
                else:
                    if wait <= 0:
                        return
                await asyncio.sleep(max(wait, MIN_SLEEP))

    async def try_acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> float:
        """One ACQUIRE: 0 when reserved, else the wait it says (REDIS_RETRY_SECONDS while Redis fails)."""
        held = self._holds.get(key, 0.0) - time.monotonic()
        if held > 0:
            return held
        args = [*self._pacing(key), str(max(0, tokens)), repr(PROBE_TIMEOUT), repr(PROBE_POLL)]
        args += [batch or "", repr(float(weight)), *_FAIR_ARGS]
        try:
            return max(0.0, float(await self._acquire(keys=_keys(key), args=args)))
        except (RedisError, OSError) as exc:
            log.warning("rate limiter: Redis unavailable (%r); retrying in %gs", exc, REDIS_RETRY_SECONDS)
            return REDIS_RETRY_SECONDS

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
        reply = await self._snapshot(keys=_keys(key), args=self._pacing(key))
        values = [None if v is None else float(v) for v in reply[:10]]
        shares = reply[10]
        now, rpm, tpm, seen, cool, sent_r, sent_t, sent_at, tat_r, tat_t = values
        assert now is not None
        given = self._given_for(key)
        learned = Limits(int(rpm) if rpm else None, int(tpm) if tpm else None)
        decay = math.exp(-max(0.0, now - (sent_at or now)) / RATE_WINDOW)
        rpm_now, tpm_now = in_force(given.rpm, learned.rpm)[0], in_force(given.tpm, learned.tpm)[0]
        snap = describe(
            key,
            given,
            learned,
            probing=seen != 1.0 and rpm_now is None and tpm_now is None,
            cooldown_until=cool if cool is not None and cool > now else None,
            sent_per_second=((sent_r or 0.0) * decay, max(0.0, (sent_t or 0.0) * decay)),
            available=(self.pace.available(tat_r, now, rpm_now), self.pace.available(tat_t, now, tpm_now)),
        )
        # Every process's sends: the same figures whichever engine saves them.
        snap["batch_rpm"] = {
            b: round(float(r) * 60.0, 1) for b, r in zip(shares[::2], shares[1::2], strict=True)
        }
        snap["shared"] = True
        return snap

    async def _cool(self, key: LimitKey, args: list[str]) -> None:
        left = await self._call(self._cooldown, key, args, "record a cooldown for")
        if left is not None:  # another process may have set a longer one: hold this one's senders as long
            self._holds[key] = max(self._holds.get(key, 0.0), time.monotonic() + float(left))

    @staticmethod
    async def _call(script: AsyncScript, key: LimitKey, args: list[str], what: str) -> str | None:
        """Run a background script; a failure is logged (a lost settle or cooldown costs accuracy only)."""
        try:
            return str(await script(keys=_keys(key), args=args))
        except Exception as exc:  # Redis unreachable: one line; anything else may be a bug: its traceback
            unreachable = isinstance(
                exc, ConnectionError | TimeoutError | RedisConnectionError | RedisTimeoutError
            )
            log.warning("could not %s %s in Redis (%r)", what, key, exc, exc_info=not unreachable)
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
