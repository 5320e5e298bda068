"""RedisLimiter's lines (redis.py): the senders of one key and batch waiting in this process, and the
permits reserved ahead for them.

One task per line asks Redis for every sender waiting (up to MAX_GRANT per ACQUIRE call) and, while the key
has budget to spare, for up to MAX_SPARE permits more: the next senders take one from the `stock` without a
round trip. A permit kept longer than PERMIT_TTL is given back (its tokens refunded and its request
returned to the bucket), so a process that stops sending holds nothing for long; one that dies held at most
MAX_SPARE of each line's budget. The permits asked ahead follow the demand: twice the senders served since
the last call, at most MAX_SPARE. Redis grants them only while the key's buckets stay at least half full
(scripts.py), so a binding limit is paced per request as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice

from pipeline.ratelimit.rules import MIN_SLEEP

#: Senders of one key and batch one ACQUIRE may grant at once.
MAX_GRANT = 64
#: Permits one line may hold ahead of its senders.
MAX_SPARE = 16
#: Seconds a permit reserved ahead may wait for a sender before it is given back.
PERMIT_TTL = 0.5


class Line:
    """The senders of one key and batch waiting in this process, oldest first; one task asks for them."""

    __slots__ = ("waiting", "weight", "asker", "stock", "served", "expiry")

    def __init__(self) -> None:
        #: (tokens, the answer: 0 reserved or the wait, blocking: waits until reserved)
        self.waiting: deque[tuple[int, asyncio.Future[float], bool]] = deque()
        self.weight = 1.0
        self.asker: asyncio.Task[None] | None = None
        #: permits reserved ahead: (tokens reserved, time.monotonic() when), oldest first
        self.stock: deque[tuple[int, float]] = deque()
        #: senders served since the last ACQUIRE call
        self.served = 0
        self.expiry: asyncio.TimerHandle | None = None

    def take(self, now: float) -> int | None:
        """The tokens of a fresh permit from the stock, or None (none fresh left)."""
        if self.stock and now - self.stock[0][1] <= PERMIT_TTL:
            self.served += 1
            return self.stock.popleft()[0]
        return None

    def stale(self, now: float) -> list[int]:
        """Take the permits older than PERMIT_TTL out of the stock (the tokens of each): to give back."""
        old = []
        while self.stock and now - self.stock[0][1] > PERMIT_TTL:
            old.append(self.stock.popleft()[0])
        return old

    def empty(self) -> list[int]:
        """Take every permit out of the stock (the tokens of each): to give back."""
        old = [tokens for tokens, _ in self.stock]
        self.stock.clear()
        return old

    def head(self) -> tuple[list[str], int]:
        """The tokens of the first MAX_GRANT senders still waiting (those cancelled are dropped first), then
        of the permits to ask for ahead; and how many are senders'."""
        waiting = self.waiting
        while waiting and waiting[0][1].done():
            waiting.popleft()
        head = list(islice(waiting, MAX_GRANT))
        if any(answer.done() for _, answer, _ in head):
            self.waiting = waiting = deque(entry for entry in waiting if not entry[1].done())
            head = list(islice(waiting, MAX_GRANT))
        asked = [str(tokens) for tokens, _, _ in head]
        if self.stock or not asked:
            return asked, len(asked)
        spare = min(MAX_SPARE, 2 * (self.served + len(asked)))  # twice the demand since the last call
        self.served = 0
        return asked + [asked[-1]] * spare, len(asked)

    def granted(self, asked: list[str], senders: int, granted: int, now: float) -> list[int]:
        """Answer the first `granted` of `asked`: the `senders` waiting first, then permits into the stock.
        Return the tokens of the permits granted to senders cancelled meanwhile (to give back)."""
        gone = []
        for _ in range(min(granted, senders)):
            reserved, answer, _ = self.waiting.popleft()
            if answer.done():
                gone.append(reserved)
            else:
                answer.set_result(0.0)
        self.stock.extend((int(tokens), now) for tokens in asked[senders:granted])
        return gone

    def answer(self, wait: float) -> bool:
        """Tell the non-blocking senders to ask again in `wait` seconds; True while others still wait."""
        if any(not blocking for _, _, blocking in self.waiting):
            for _, answer, blocking in self.waiting:
                if not blocking and not answer.done():
                    answer.set_result(max(wait, MIN_SLEEP))
            self.waiting = deque(entry for entry in self.waiting if entry[2])
        return bool(self.waiting)

    def fail(self, exc: BaseException | None) -> None:
        """End every sender waiting: with `exc`, or cancelled."""
        while self.waiting:
            answer = self.waiting.popleft()[1]
            if not answer.done():
                if exc is None:
                    answer.cancel()
                else:
                    answer.set_exception(exc)
