"""The engine's backlog: claimed rows that have not been through the limiter yet, per batch.

A worker claims rows by fair share whenever its backlog runs below a message's worth (fleet/worker.py), and
prefers the batch with the fewest rows waiting here for its priority (store/fair.py): so each running batch
has rows waiting for its turn at the limiter, and a batch submitted meanwhile is claimed within a piece's
time, whatever the worker's threads hold. A row leaves the backlog when it goes through the limiter, or
ends before that.
"""

from __future__ import annotations

import asyncio
import collections


class Backlog:
    """Rows waiting for the limiter, counted per batch."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop  #: the engine drains: nobody waits for room any more
        self._rows: dict[int, str] = {}
        self._per_batch: collections.Counter[str] = collections.Counter()
        self._moved = asyncio.Event()

    @property
    def total(self) -> int:
        return len(self._rows)

    def per_batch(self) -> dict[str, int]:
        """Rows waiting here, per batch (batches with none are left out)."""
        return dict(self._per_batch)

    def add(self, request_id: int, batch_id: str) -> None:
        if request_id not in self._rows:
            self._rows[request_id] = batch_id
            self._per_batch[batch_id] += 1

    def passed(self, request_id: int) -> None:
        """The row went through the limiter, or ended before."""
        batch_id = self._rows.pop(request_id, None)
        if batch_id is not None:
            self._per_batch[batch_id] -= 1
            if not self._per_batch[batch_id]:
                del self._per_batch[batch_id]
            self._moved.set()

    async def below(self, limit: int, timeout: float) -> bool:
        """Wait until fewer than `limit` rows wait (True), or the engine drains or `timeout` seconds pass."""
        stop = self._stop
        deadline = asyncio.get_running_loop().time() + timeout
        while self.total >= limit and not stop.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._moved.clear()
            stopping = asyncio.ensure_future(stop.wait())
            moved = asyncio.ensure_future(self._moved.wait())
            await asyncio.wait({stopping, moved}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            moved.cancel()
        return self.total < limit
