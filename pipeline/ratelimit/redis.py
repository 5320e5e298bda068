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

Round trips are few (lines.py): per process, key and batch one task asks ACQUIRE for every sender waiting
in one call (one grant per sender, in order, as one call each would have), and, while the key has budget to
spare, for permits ahead that the next senders take without asking (given back after PERMIT_TTL, at a
cooldown and at `aclose`). `settle` and `cooldown` are synchronous (the engine calls them so): settles (and
the permits taken or given back) gather for SETTLE_GATHER seconds and go as one SETTLE call per key, in one
pipeline; `cooldown` runs its script in a background task and holds this process's senders at once.
`snapshot` is async. `drain` waits for the settles and cooldowns issued so far; `aclose` gives back the
permits ahead, drains, then closes the connections. Like its Redis client, a RedisLimiter belongs to the
event loop that first uses it.
Needs Redis >= 5 (scripts that write after reading TIME).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.ratelimit.fair import IDLE_SECONDS, MAX_FAIR_WAIT, QUANTUM, SLACK
from pipeline.ratelimit.lines import PERMIT_TTL, Line
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

#: What a record without an answer (a permit taken or given back) says of the limits: nothing.
_NO_HEADERS = RateHeaders()

#: Seconds an untouched key's state (learned limits included) stays in Redis.
DEFAULT_TTL = 3600
#: Connections per limiter; settles beyond that queue for a free one instead of opening more.
MAX_CONNECTIONS = 16
#: Seconds any one Redis command may take (connect, send, answer) before it counts as failed.
REDIS_TIMEOUT = 5.0
#: Seconds between tries while Redis cannot be reached.
REDIS_RETRY_SECONDS = 1.0
#: Seconds the answers' settles gather before they are sent together.
SETTLE_GATHER = 0.02
#: Answers one SETTLE call carries (more go in further calls of the same pipeline).
MAX_SETTLES = 128
#: SETTLE's arguments per answer.
SETTLE_ARGS = 9
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
        #: senders waiting, per key and batch
        self._lines: dict[tuple[LimitKey, str | None], Line] = {}
        self._askers: set[asyncio.Task[None]] = set()
        #: settles not sent yet: 9 arguments per answer (scripts.SETTLE), per key
        self._settles: dict[LimitKey, list[str]] = {}
        self._flushing = False
        self._gathering: asyncio.Future[None] | None = None
        self._hurry = False  #: `drain` waits: send without gathering
        self._holds: dict[LimitKey, float] = {}  #: local cooldown ends, time.monotonic()
        self._given: dict[LimitKey, Limits] = {}  #: limits given for one key (an account's)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the settles and cooldowns under way, then close the connections."""
        for asker in list(self._askers):
            asker.cancel()
        for line in self._lines.values():
            if line.expiry is not None:
                line.expiry.cancel()
        self._give_back()
        await self.drain()
        await self._redis.aclose()

    async def drain(self) -> None:
        """Wait until every settle and cooldown issued so far has reached Redis (or failed)."""
        self._hurry = True  # send the settles gathering now, without waiting out the gather
        if self._gathering is not None:
            self._gathering.cancel()
        try:
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._hurry = False

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
        await self._join(key, tokens, batch, weight, blocking=True)

    async def try_acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> float:
        """0 when reserved, else the wait ACQUIRE says (REDIS_RETRY_SECONDS while Redis fails)."""
        held = self._holds.get(key, 0.0) - time.monotonic()
        if held > 0:
            return held
        return await self._join(key, tokens, batch, weight, blocking=False)

    async def _join(
        self, key: LimitKey, tokens: int, batch: str | None, weight: float, blocking: bool
    ) -> float:
        """A permit from the line's stock, else wait in the line of `key` and `batch` for its asker's
        answer: 0 when reserved, else (not `blocking`) the seconds until it may be asked again."""
        line = self._lines.get((key, batch))
        if line is None:
            line = self._lines[(key, batch)] = Line()
        tokens, line.weight = max(0, tokens), weight
        now = time.monotonic()
        if not line.waiting and self._holds.get(key, 0.0) <= now:
            reserved = line.take(now)
            if reserved is not None:
                if reserved != tokens:
                    self._record(key, reserved, tokens, "a")
                return 0.0
        answer: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        line.waiting.append((tokens, answer, blocking))
        if line.asker is None:
            line.asker = asyncio.get_running_loop().create_task(self._ask(key, batch, line))
            self._askers.add(line.asker)
            line.asker.add_done_callback(self._askers.discard)
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled() and answer.result() <= 0:
                self._record(key, tokens, None, "g")  # reserved for a sender that is gone: give it back
            raise

    async def _ask(self, key: LimitKey, batch: str | None, line: Line) -> None:
        """Ask Redis for the senders waiting in `line`, up to MAX_GRANT a call, until none waits."""
        try:
            while line.waiting:
                held = self._holds.get(key, 0.0) - time.monotonic()
                if held <= 0:
                    asking, senders = line.head()
                    if not asking:
                        break
                    held = await self._grant(key, batch, line, asking, senders)
                if held > 0 and line.answer(held):  # the non-blocking senders are told the wait
                    await asyncio.sleep(max(held, MIN_SLEEP))
        except Exception as exc:  # not Redis being down (that waits): every sender waiting gets it
            line.fail(exc)
        finally:
            line.asker = None
            if line.waiting:  # cancelled (aclose): the senders left waiting are cancelled too
                line.fail(None)

    async def _grant(
        self, key: LimitKey, batch: str | None, line: Line, asking: list[str], senders: int
    ) -> float:
        """One ACQUIRE for the head of `line` and the permits ahead: the senders granted are answered,
        then those come meanwhile from the stock; returns the wait for the rest."""
        args = [*self._pacing(key), repr(PROBE_TIMEOUT), repr(PROBE_POLL), batch or ""]
        args += [repr(float(line.weight)), *_FAIR_ARGS, str(senders), *asking]
        try:
            granted, wait = await self._acquire(keys=_keys(key), args=args)
        except (RedisError, OSError) as exc:
            # Sending without the shared budget could overrun it for every process: wait for Redis.
            log.warning("rate limiter: Redis unavailable (%r); retrying in %gs", exc, REDIS_RETRY_SECONDS)
            return REDIS_RETRY_SECONDS
        now = time.monotonic()
        for tokens in line.granted(asking, senders, int(granted), now):
            self._record(key, tokens, None, "g")  # its sender was cancelled meanwhile
        while line.waiting and line.stock:  # senders come during the call take the permits ahead
            entry = line.waiting.popleft()
            if entry[1].done():
                continue
            reserved = line.take(now)
            if reserved is None:
                line.waiting.appendleft(entry)
                break
            if reserved != entry[0]:
                self._record(key, reserved, entry[0], "a")
            entry[1].set_result(0.0)
        if line.stock and line.expiry is None:
            line.expiry = asyncio.get_running_loop().call_later(PERMIT_TTL, self._expire, key, line)
        return float(wait)

    def _expire(self, key: LimitKey, line: Line) -> None:
        """Give back the permits ahead no sender took in time; look again when the next one is due."""
        line.expiry = None
        for tokens in line.stale(time.monotonic()):
            self._record(key, tokens, None, "g")
        if line.stock:
            due = line.stock[0][1] + PERMIT_TTL - time.monotonic()
            line.expiry = asyncio.get_running_loop().call_later(
                max(due, 0.0) + MIN_SLEEP, self._expire, key, line
            )

    def _give_back(self, key: LimitKey | None = None) -> None:
        """Give back every permit ahead (of `key`, or of every key)."""
        for (line_key, _), line in self._lines.items():
            if key is None or line_key == key:
                for tokens in line.empty():
                    self._record(line_key, tokens, None, "g")

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        rh = RateHeaders.parse(headers)
        self._record(key, max(0, reserved), used, "1" if rh.seen else "0", rh)

    def _record(
        self, key: LimitKey, reserved: int, used: int | None, kind: str, rh: RateHeaders = _NO_HEADERS
    ) -> None:
        """Queue one SETTLE record (scripts.py) for the next flush."""
        asyncio.get_running_loop()  # like every call here, only on the limiter's loop
        self._settles.setdefault(key, []).extend(
            (
                str(reserved),
                _arg(used),
                kind,
                _arg(rh.limit_requests or None),
                _arg(rh.limit_tokens or None),
                _arg(rh.remaining_requests),
                _arg(rh.reset_requests),
                _arg(rh.remaining_tokens),
                _arg(rh.reset_tokens),
            )
        )
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())

    async def _flush(self) -> None:
        """Send the settles gathered so far, one script call per key, in one pipeline; again while more
        came meanwhile."""
        try:
            while self._settles:
                # The answers coming meanwhile go in the same call (`drain` cuts the wait short).
                if not self._hurry:
                    self._gathering = asyncio.ensure_future(asyncio.sleep(SETTLE_GATHER))
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._gathering
                    self._gathering = None
                    if (task := asyncio.current_task()) is not None and task.cancelling():
                        raise asyncio.CancelledError  # this task was cancelled, not only its gather
                gathered, self._settles = self._settles, {}
                calls = [
                    (key, [*self._pacing(key), "1" if self.pace.refund else "0", str(key), *part])
                    for key, records in gathered.items()
                    for part in _parts(records, SETTLE_ARGS * MAX_SETTLES)
                ]
                if len(calls) == 1:
                    await self._call(self._settle, *calls[0], "settle")
                else:
                    await self._settle_piped(calls)
        finally:
            self._flushing = False

    async def _settle_piped(self, calls: list[tuple[LimitKey, list[str]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, args in calls:
                    await self._settle(keys=_keys(key), args=args, client=pipe)
                await pipe.execute()
        except Exception as exc:
            _failed("settle", f"{len(calls)} keys", exc)

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        self._give_back(key)  # this process's permits ahead would go out in the cooldown
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
        except Exception as exc:
            _failed(what, str(key), exc)
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


def _parts(records: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _failed(what: str, whose: str, exc: Exception) -> None:
    # Redis unreachable: one line; anything else may be a bug: its traceback.
    unreachable = isinstance(exc, ConnectionError | TimeoutError | RedisConnectionError | RedisTimeoutError)
    log.warning("could not %s %s in Redis (%r)", what, whose, exc, exc_info=not unreachable)
