"""Slots: how many requests may be in flight at once, shared fairly between the batches waiting for one.

A slot is held from the checks before the limiter to the answer, so rows waiting for the rate limit hold
slots too. Handed out first come, first served, a batch that arrived with thousands of rows would keep
every slot and a batch claimed after it could not even ask the limiter for its turn. So a freed slot goes
to the waiting batch that holds the fewest slots for its weight (its priority), first come, first served
within a batch.
"""

from __future__ import annotations

import asyncio
import collections


class Slots:
    """A counting semaphore with a FIFO queue per group (batch); acquire and release are O(groups)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._weights: dict[str, float] = {}

    def take(self, group: str = "", weight: float = 1.0) -> _Held:
        """Hold one slot for `group` (a batch) while the `async with` block runs."""
        return _Held(self, group, weight)

    async def _acquire(self, group: str, weight: float) -> None:
        self._weights[group] = max(weight, 1e-9)
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._held[group] += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(group, collections.deque()).append(waiter)
        try:
            await waiter  # the releaser hands its slot over (and counts it as ours): _free is untouched
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(group)  # handed a slot while being cancelled: pass it on
            raise

    def _release(self, group: str) -> None:
        self._held[group] -= 1
        if not self._held[group]:
            del self._held[group]
            if group not in self._waiters:
                self._weights.pop(group, None)
        while self._waiters:
            # The batch with the fewest slots for its weight goes next.
            turn = min(self._waiters, key=lambda g: self._held[g] / self._weights.get(g, 1.0))
            queue = self._waiters[turn]
            waiter = queue.popleft()
            if not queue:
                del self._waiters[turn]
            if not waiter.done():
                self._held[turn] += 1
                waiter.set_result(None)
                return
        self._free += 1


class _Held:
    """`Slots.take`'s context: a plain class, as every request enters one (a generator-based context manager
    cost more than the rest of the slot's bookkeeping)."""

    __slots__ = ("_slots", "_group", "_weight")

    def __init__(self, slots: Slots, group: str, weight: float) -> None:
        self._slots, self._group, self._weight = slots, group, weight

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._group, self._weight)

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots._release(self._group)
