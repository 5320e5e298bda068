"""Adaptive concurrency for servers that send no rate-limit headers (vLLM, llama.cpp, TGI, Ollama).

Such a server has no limit to learn: it answers slower as requests queue inside it, then refuses (429/503) or
times out. So for an account whose answers carry no `x-ratelimit-limit-*` header and that was given no limit,
the engine keeps at most `Gate.limit` requests in flight to it and moves that limit with every answer, by one
pure function, `next_limit` (a gradient rule, as Netflix's concurrency-limits `Gradient2Limit`):

- the gradient is `TOLERANCE x shortest latency seen / this latency`, clipped to [0.5, 1]: 1 while answers
  come as fast as the fastest (no queue at the server), less as a queue builds;
- each answer moves the limit 1/limit of the way to `limit x gradient + sqrt(limit)`: the limit grows by
  about sqrt(limit) per round trip while nothing queues, and settles where the queue the latency shows
  balances sqrt(limit) - just past the knee, where throughput is already the server's most;
- a 429, a 503 or a timeout (`overloaded`) cuts it by BACKOFF at once, at most once per round trip;
- always within [1, ceiling] (`--max-in-flight`).

The shortest latency is that of successful answers over the last one to two MIN_WINDOW periods (an error
answers fast and says nothing of the queue), so that a server that became slower for good is not taken for a
queue forever.
"""

from __future__ import annotations

import asyncio
import math
import time

#: How much slower than the fastest answer an answer may be before it counts as queueing.
TOLERANCE = 1.5
#: The factor the limit is cut by on an overloaded answer (429, 503, timeout).
BACKOFF = 0.7
#: The first limit: as many as the limiter's probe (rules.PROBE_IN_FLIGHT).
START = 4.0
#: Seconds after which the shortest latency seen is forgotten (it is the least of this window and the last).
MIN_WINDOW = 30.0


def next_limit(limit: float, latency: float, fastest: float, overloaded: bool, ceiling: int) -> float:
    """The concurrency limit after one answer that took `latency` seconds (see the module docstring)."""
    if overloaded:
        return max(1.0, limit * BACKOFF)
    gradient = min(1.0, max(0.5, TOLERANCE * fastest / latency)) if latency > 0 else 1.0
    target = limit * gradient + math.sqrt(limit)
    return min(float(ceiling), max(1.0, limit + (target - limit) / max(limit, 1.0)))


class Gate:
    """One account's in-flight limit, adapted by `next_limit`, for accounts without rate-limit headers.

    `active` turns off for good once an answer carries `x-ratelimit-limit-*` headers (the limiter paces that
    account) or when limits were given. Engine-local: every engine adapts on its own, which AIMD-style rules
    tolerate (each backs off when the server says so).
    """

    __slots__ = (
        "active",
        "limit",
        "in_flight",
        "ceiling",
        "_cut_at",
        "_freed",
        "_window",
        "_earlier",
        "_now",
    )

    def __init__(self, ceiling: int, freed: asyncio.Event, active: bool = True) -> None:
        self.active = active
        self.ceiling = ceiling
        self.limit = min(START, float(ceiling))
        self.in_flight = 0
        self._cut_at = -math.inf
        #: the shortest latency of successes in this window (since `_window`) and in the one before
        self._window, self._now, self._earlier = -math.inf, math.inf, math.inf
        #: set whenever a request leaves: senders waiting for room look again
        self._freed = freed

    def room(self) -> bool:
        return not self.active or self.in_flight < self.limit

    def enter(self) -> None:
        self.in_flight += 1

    @property
    def fastest(self) -> float:
        """The shortest latency of a success lately (inf before any)."""
        return min(self._now, self._earlier)

    def leave(self, latency: float | None, overloaded: bool) -> None:
        """One request is done: a success that took `latency` seconds (None: no success), `overloaded`
        (429, 503, timeout)."""
        self.in_flight -= 1
        if self.active and (latency is not None or overloaded):
            self._observe(latency, overloaded)
        self._freed.set()

    def _observe(self, latency: float | None, overloaded: bool) -> None:
        now = time.monotonic()
        if latency is not None and latency > 0:
            if now - self._window > MIN_WINDOW:
                self._window, self._earlier, self._now = now, self._now, latency
            else:
                self._now = min(self._now, latency)
        if overloaded:
            if now - self._cut_at < min(self.fastest, 1.0):
                return  # one cut per round trip: the answers of one burst say the same thing
            self._cut_at = now
        fastest = self.fastest if math.isfinite(self.fastest) else (latency or 0.0)
        self.limit = next_limit(self.limit, latency or fastest, fastest, overloaded, self.ceiling)
