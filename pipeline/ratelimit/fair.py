"""Fair share of one key's budget among the batches asking for it: start-time fair queueing, by polling.

Senders do not queue in one line the limiter could reorder: they ask, and are told to go or to wait. So the
order is kept with tags. Each batch asking for a key has a `tag`, the virtual time at which its next request
starts: every request it is granted moves its tag on by the request's cost (seconds of the key's budget:
1/rate for the request, tokens/rate for its tokens, whichever is more) divided by the batch's weight (its
priority). A batch whose tag is more than QUANTUM ahead of the lowest tag among the *other batches waiting*
for the key is told to wait one request's time; the budget then goes to the batch behind. So batches that
all want more than the budget share it in proportion to their weights, within QUANTUM.

- Waiting: a batch counts as waiting only after it was told to wait, until SLACK after the wait it was told
  (its sender asks again by then). A batch whose requests go out at once, or that stopped asking, holds
  nobody back: the budget stays work-conserving.
- Joining: a batch that was not waiting starts no further behind than QUANTUM before the lowest tag among
  the waiting batches, or, with none, before `clock` (the highest start tag granted so far): a newcomer
  neither starves the others (it does not start far behind: at most QUANTUM of the budget goes to it
  first) nor starves itself (it does not start ahead). A batch whose sender was merely late to ask again
  (a busy event loop) keeps its place instead of losing up to QUANTUM each time.
- Forgetting: a batch that has not asked for IDLE_SECONDS is dropped (its tag and its send rate).

`FairShare` is this for LocalLimiter (one per key, times are `time.monotonic()`); redis.py's ACQUIRE script
repeats it in Lua over a hash per key, with Redis's clock. A request asked for without a batch is not part
of any share (it only spends the budget), as before fair share existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.ratelimit.rules import RATE_WINDOW

#: How far ahead, in virtual seconds (seconds of the key's budget at weight 1), a batch may run of the
#: furthest-behind waiting batch. A tenth of a second: 10 requests at 6,000 RPM, 3 in 4 seconds at 45 RPM.
QUANTUM = 0.1
#: A batch told to wait counts as waiting for this long after the wait it was told: room for its sender to
#: wake, and for the round trip to Redis, on a loaded machine.
SLACK = 0.1
#: Longest wait a batch is told when it is ahead: its sender asks again after at most this (seconds).
MAX_FAIR_WAIT = 0.05
#: A batch that has not asked for this long is forgotten.
IDLE_SECONDS = 300.0


def request_cost(
    rate_requests: float | None, rate_tokens: float | None, tokens: int, tpm: int | None
) -> float:
    """Seconds of a key's budget one request takes: the larger of its request and its tokens (0: no limits).

    `rate_*` are the paced rates per second; tokens are clipped to one minute's worth, as the bucket does.
    """
    cost = 1.0 / rate_requests if rate_requests else 0.0
    if rate_tokens and tpm:
        cost = max(cost, min(tokens, tpm) / rate_tokens)
    return cost


@dataclass
class Asker:
    """One batch asking for a key's budget."""

    tag: float = 0.0
    #: counts as waiting until then
    waiting_until: float = -math.inf
    asked_at: float = 0.0
    #: requests granted per second, a moving average over about RATE_WINDOW seconds
    rate: float = 0.0
    rate_at: float = 0.0


@dataclass
class FairShare:
    """The tags of the batches asking for one key."""

    askers: dict[str, Asker] = field(default_factory=dict)
    #: the highest start tag granted so far: where a batch joins when nobody waits
    clock: float = 0.0

    def wait(self, now: float, batch: str, cost: float) -> float:
        """Seconds `batch` must wait for the others (0: its turn), and it is marked as asking now."""
        self._forget(now)
        me = self.askers.get(batch)
        if me is None:
            me = self.askers[batch] = Asker(tag=self.clock)
        floor = min(
            (a.tag for b, a in self.askers.items() if b != batch and a.waiting_until > now), default=None
        )
        if me.waiting_until <= now:  # joining the line: at most QUANTUM behind the others
            me.tag = max(me.tag, (self.clock if floor is None else floor) - QUANTUM)
        me.asked_at = now
        if floor is None or cost <= 0 or me.tag - floor <= QUANTUM:
            return 0.0
        return min(max(cost, 1e-3), MAX_FAIR_WAIT)

    def waiting(self, now: float, batch: str, wait: float) -> None:
        """`batch` was told to wait `wait` seconds: it is waiting until it asks again."""
        me = self.askers[batch]
        me.waiting_until = max(me.waiting_until, now + wait + SLACK)

    def granted(self, now: float, batch: str, cost: float, weight: float) -> None:
        """`batch` got one request of `cost`: its tag moves on by cost / weight."""
        me = self.askers[batch]
        self.clock = max(self.clock, me.tag)
        me.tag += cost / max(weight, 1e-9)
        decay = math.exp(-max(0.0, now - me.rate_at) / RATE_WINDOW)
        me.rate, me.rate_at = me.rate * decay + 1.0 / RATE_WINDOW, now

    def rates(self, now: float) -> dict[str, float]:
        """Requests per second each batch was granted lately."""
        return {
            b: a.rate * math.exp(-max(0.0, now - a.rate_at) / RATE_WINDOW) for b, a in self.askers.items()
        }

    def _forget(self, now: float) -> None:
        idle = [b for b, a in self.askers.items() if now - a.asked_at > IDLE_SECONDS]
        for b in idle:
            del self.askers[b]
