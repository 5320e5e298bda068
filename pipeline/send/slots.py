"""Slots: how many requests may be in flight at once, handed out first come, first served."""

from __future__ import annotations

import asyncio
import collections


class Slots:
    """A FIFO counting semaphore whose acquire and release are O(1).

    asyncio.Semaphore scans all its waiters on every acquire; with thousands of claimed rows waiting for one
    of max-in-flight slots that scan dominated the event loop.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releaser hands its slot over: _free is not incremented in between
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
