"""LocalLimiter: the rate limits of one process, paced in memory (asyncio).

Per key and per limit (requests, tokens) a GCRA, i.e. a token bucket kept as one number: `tat`, the
time at which the bucket is full again. The rate is MARGIN x the per-minute limit / 60 per second and
the bucket holds BURST_SECONDS of it. A request fits when its cost, clipped to the bucket, fits
(a request bigger than the bucket waits for a full bucket, then goes); it is charged in full (clipped
to one minute's worth), so big requests borrow from the following seconds and the long-run rate
holds. Buckets start empty, so a fresh key ramps at the steady rate instead of bursting.

The arithmetic is in `KeyState` (with rules.Pace); redis.py runs the same rules in Lua. Senders of one key
and batch queue FIFO: only the head of each batch's queue computes and sleeps, and batches take turns by
their fair share of the key (fair.py). `snapshot` is synchronous here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.ratelimit.fair import FairShare, request_cost
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

#: A wait this short counts as none (float rounding after sleeping exactly the wait asked for).
EPSILON = 1e-6


@dataclass
class KeyState:
    """Everything known about one key. Times are `time.monotonic()` seconds."""

    learned: Limits = Limits()
    #: An answer with headers has been seen: no more probing.
    seen: bool = False
    probes: int = 0
    probe_at: float = -math.inf
    tat_requests: float | None = None
    tat_tokens: float | None = None
    cool_until: float = -math.inf
    sent_requests: float = 0.0  #: moving average, per second
    sent_tokens: float = 0.0  #: moving average, per second
    sent_at: float = 0.0
    #: the batches asking for this key, and their turns
    fair: FairShare = field(default_factory=FairShare)
    #: limits given for this key alone (an account's), over the table's
    given: Limits | None = None

    def take(
        self,
        now: float,
        tokens: int,
        given: Limits,
        pace: Pace,
        batch: str | None = None,
        weight: float = 1.0,
    ) -> float:
        """Reserve one request of `tokens` and return 0, or return the seconds to wait first.

        With a `batch`, the request also waits for its turn in the key's fair share (fair.py).
        """
        if self.cool_until > now:
            return self.cool_until - now
        rpm, _ = in_force(given.rpm, self.learned.rpm)
        tpm, _ = in_force(given.tpm, self.learned.tpm)
        probing = not self.seen and rpm is None and tpm is None
        if probing and now - self.probe_at >= PROBE_TIMEOUT:
            self.probes = 0
        if probing and self.probes >= pace.probe_in_flight:
            return PROBE_POLL
        wait = self._budget_wait(now, tokens, rpm, tpm, pace)
        cost = 0.0
        if batch is not None:
            rates = (pace.rate(rpm) if rpm else None, pace.rate(tpm) if tpm else None)
            cost = request_cost(*rates, tokens, tpm)
            wait = max(wait, self.fair.wait(now, batch, cost))
            if wait > EPSILON:
                self.fair.waiting(now, batch, wait)
        if wait > EPSILON:
            return wait
        if rpm is not None:
            self.tat_requests = pace.charge(self.tat_requests, now, 1, rpm)
        if tpm is not None:
            self.tat_tokens = pace.charge(self.tat_tokens, now, tokens, tpm)
        if probing:
            self.probes, self.probe_at = self.probes + 1, now
        if batch is not None:
            self.fair.granted(now, batch, cost, weight)
        self.count(now, 1, tokens)
        return 0.0

    def _budget_wait(self, now: float, tokens: int, rpm: int | None, tpm: int | None, pace: Pace) -> float:
        """Seconds until the buckets hold one request of `tokens` (a new bucket starts empty)."""
        if rpm is not None and self.tat_requests is None:
            self.tat_requests = now + pace.burst
        if tpm is not None and self.tat_tokens is None:
            self.tat_tokens = now + pace.burst
        wait = 0.0
        if rpm is not None:
            wait = max(wait, pace.wait(self.tat_requests, now, 1, rpm))
        if tpm is not None:
            wait = max(wait, pace.wait(self.tat_tokens, now, tokens, tpm))
        return wait

    def settle(
        self, now: float, reserved: int, used: int | None, rh: RateHeaders, given: Limits, pace: Pace
    ) -> None:
        """Learn from the headers, then charge or refund `used - reserved` and tighten the buckets."""
        if not self.seen:
            self.probes = max(0, self.probes - 1)
        self.seen = self.seen or rh.seen
        self.learned = Limits(rh.limit_requests or self.learned.rpm, rh.limit_tokens or self.learned.tpm)
        rpm, _ = in_force(given.rpm, self.learned.rpm)
        tpm, _ = in_force(given.tpm, self.learned.tpm)
        if tpm is not None and used is not None and self.tat_tokens is not None:
            delta = min(used, tpm) - min(reserved, tpm)
            if delta > 0 or pace.refund:
                self.tat_tokens = max(max(self.tat_tokens, now) + delta / pace.rate(tpm), now)
                self.count(now, 0, delta)
        if rpm is not None and rh.remaining_requests is not None and rh.reset_requests is not None:
            self.tat_requests = pace.tighten(
                self.tat_requests, now, rpm, rh.remaining_requests, rh.reset_requests
            )
        if tpm is not None and rh.remaining_tokens is not None and rh.reset_tokens is not None:
            self.tat_tokens = pace.tighten(self.tat_tokens, now, tpm, rh.remaining_tokens, rh.reset_tokens)

    def cooldown(self, now: float, seconds: float, pace: Pace) -> None:
        """Hold every sender until now + seconds; the buckets restart empty then (no burst)."""
        self.cool_until = max(self.cool_until, now + seconds)
        restart = self.cool_until + pace.burst
        self.tat_requests = restart if self.tat_requests is None else max(self.tat_requests, restart)
        self.tat_tokens = restart if self.tat_tokens is None else max(self.tat_tokens, restart)

    def count(self, now: float, requests: int, tokens: int) -> None:
        """Feed the moving averages of the send rate."""
        decay = math.exp(-max(0.0, now - self.sent_at) / RATE_WINDOW)
        self.sent_requests = self.sent_requests * decay + requests / RATE_WINDOW
        self.sent_tokens = self.sent_tokens * decay + tokens / RATE_WINDOW
        self.sent_at = now

    def sent(self, now: float) -> tuple[float, float]:
        """(requests, tokens) per second, averaged over about RATE_WINDOW seconds."""
        decay = math.exp(-max(0.0, now - self.sent_at) / RATE_WINDOW)
        return self.sent_requests * decay, max(0.0, self.sent_tokens * decay)


class LocalLimiter:
    """Paces the requests of this process to the given or learned limits of each key."""

    def __init__(
        self,
        limits: LimitTable | None = None,
        *,
        margin: float = MARGIN,
        burst_seconds: float = BURST_SECONDS,
        probe_in_flight: int = PROBE_IN_FLIGHT,
        refund: bool = True,
    ) -> None:
        self.limits = limits or LimitTable()
        self.pace = Pace(margin, burst_seconds, probe_in_flight, refund)
        self._states: dict[LimitKey, KeyState] = {}
        # Senders of a key queue on its lock. Locks belong to one event loop; the state outlives it
        # (a worker may run one asyncio.run per chunk with the same limiter).
        self._locks: dict[tuple[LimitKey, str | None], asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _state(self, key: LimitKey) -> KeyState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = KeyState()
        return state

    def _lock(self, key: LimitKey, batch: str | None) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._locks = loop, {}
        lock = self._locks.get((key, batch))
        if lock is None:
            lock = self._locks[(key, batch)] = asyncio.Lock()
        return lock

    def give(self, key: LimitKey, limits: Limits) -> None:
        self._state(key).given = limits

    def _given(self, key: LimitKey, state: KeyState) -> Limits:
        return state.given or self.limits.for_model(key.model)

    async def try_acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> float:
        state = self._state(key)
        given = self._given(key, state)
        return state.take(time.monotonic(), max(0, tokens), given, self.pace, batch, weight)

    async def acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> None:
        state = self._state(key)
        given = self._given(key, state)
        tokens = max(0, tokens)
        # Senders of one batch queue in line; the head of each batch's line asks for the fair share.
        lock = self._lock(key, batch)
        # Nobody waiting and budget free: take it now. Queuing on the lock costs O(waiters) per acquire
        # in asyncio, which hundreds of senders in flight turn into the engine's hottest line.
        if not lock.locked() and state.take(time.monotonic(), tokens, given, self.pace, batch, weight) <= 0:
            return
        async with lock:
            while (wait := state.take(time.monotonic(), tokens, given, self.pace, batch, weight)) > 0:
                await asyncio.sleep(max(wait, MIN_SLEEP))

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        state = self._state(key)
        rh = RateHeaders.parse(headers)
        state.settle(time.monotonic(), max(0, reserved), used, rh, self._given(key, state), self.pace)

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        self._state(key).cooldown(time.monotonic(), max(0.0, seconds), self.pace)

    def snapshot(self, key: LimitKey) -> dict[str, Any]:
        """Limits in force, their source, cooldown end (Unix time) and send rates (per minute)."""
        state, now = self._state(key), time.monotonic()
        given = self._given(key, state)
        rpm, _ = in_force(given.rpm, state.learned.rpm)
        tpm, _ = in_force(given.tpm, state.learned.tpm)
        cooling = state.cool_until > now
        snap = describe(
            key,
            given,
            state.learned,
            probing=not state.seen and rpm is None and tpm is None,
            cooldown_until=time.time() + state.cool_until - now if cooling else None,
            sent_per_second=state.sent(now),
            available=(
                self.pace.available(state.tat_requests, now, rpm),
                self.pace.available(state.tat_tokens, now, tpm),
            ),
        )
        # This process's own sends only: `pipeline status` adds up the engines' figures.
        snap["batch_rpm"] = {b: round(r * 60.0, 1) for b, r in state.fair.rates(now).items()}
        snap["shared"] = False
        return snap
