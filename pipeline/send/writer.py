"""The writer: stores the engine's outcomes in batched transactions, in the background, and never dies.

The engine puts each outcome here as soon as it is known; a burst of outcomes gathers for a moment and goes
into one transaction. `on_stored` tells the engine which rows are stored (so it can let go of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pipeline.store import claims
from pipeline.store.claims import Outcome
from pipeline.store.db import Database

log = logging.getLogger(__name__)

#: Outcomes stored per transaction at most.
WRITE_BATCH = 1000
#: Seconds a first outcome waits for others to share its transaction.
GATHER_SECONDS = 0.05


class Writer:
    """Use as `async with Writer(db, worker, on_stored) as writer: writer.put(outcome)`."""

    def __init__(self, db: Database, worker: str, on_stored: Callable[[list[Outcome]], None]) -> None:
        self.db = db
        self.worker = worker
        self._on_stored = on_stored
        self._outbox: asyncio.Queue[Outcome] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(report_death)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def put(self, outcome: Outcome) -> None:
        self._outbox.put_nowait(outcome)

    async def join(self) -> None:
        """Wait until every outcome put so far is stored."""
        await self._outbox.join()

    async def _run(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            await asyncio.sleep(GATHER_SECONDS)  # let a burst of outcomes gather into one transaction
            while len(batch) < WRITE_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            await self._store(batch)
            self._on_stored(batch)
            for _ in batch:
                self._outbox.task_done()

    async def _store(self, batch: list[Outcome]) -> None:
        """Store a batch of outcomes, trying until it works.

        The writer must never die: a dead writer leaves every chunk waiting for its rows to be stored while
        the lease keeper keeps their leases alive, so nothing would ever recover them. Any failure (database
        restarting, pool exhausted, lock timeout) is logged and retried; the rows stay leased meanwhile.
        """
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(claims.record, self.db, self.worker, batch)
                return
            except Exception as exc:
                log.warning("storing %d outcomes failed (%r); retrying in %.1fs", len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def report_death(task: asyncio.Task[None]) -> None:
    """A background task must only end by cancellation; say loudly if one crashed."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task %s crashed", task.get_coro(), exc_info=task.exception())
