"""The writer: stores the engine's outcomes promptly, in batched transactions, in the background.

The engine puts each outcome here as soon as it is known; a burst gathers for at most GATHER_SECONDS and
goes into one transaction, so an answer is stored within a fraction of a second of its arrival and a kill
loses few. `on_stored(stored, dropped)` tells the engine which rows are done with: stored, or dropped
because their row was taken back by another engine (the fence moved).

No outcome can block the others. A failure that another try may cure (the database restarting, busy, out
of connections, a full disk) is retried with backoff, forever, unless the engine drains: then for at most
the drain time, after which the outcomes are given up (their requests will be sent again). Each failed try
is one line in the log, and the engine's `WriteHealth` hears of it: while storing fails, nothing new is
sent, and a failure that lasts makes the engine stalled (send/health.py). Any other failure (a
value the database refuses) splits the transaction in halves until the outcome that cannot be stored is
alone; that one is stored as failed with the reason, without its answer, and all the others are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.send.health import STORING, WriteHealth
from pipeline.store import claims
from pipeline.store.claims import Outcome
from pipeline.store.db import Database, first_line, is_transient

log = logging.getLogger(__name__)

#: Outcomes stored per transaction at most.
WRITE_BATCH = 500
#: Seconds a first outcome waits for others to share its transaction.
GATHER_SECONDS = 0.05
#: Longest pause between two tries of a failing transaction.
MAX_RETRY_SECONDS = 10.0

T = TypeVar("T")
OnStored = Callable[[list[Outcome], list[Outcome]], None]


class Writer:
    """Use as `async with Writer(db, on_stored) as writer: writer.put(outcome)`."""

    def __init__(self, db: Database, on_stored: OnStored, health: WriteHealth | None = None) -> None:
        self.db = db
        self._on_stored = on_stored
        self._health = health if health is not None else WriteHealth(math.inf)
        self._outbox: asyncio.Queue[Outcome] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._give_up_at: float | None = None
        self._wake = asyncio.Event()  #: cuts a retry's wait short when a drain sets a deadline

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
        """Wait until every outcome put so far is stored (or given up, when draining), or the writer has
        stopped: cancelled with the event loop (a second Ctrl-C), it stores nothing more, and what it had
        not stored is sent again by the next run."""
        if self._task is None or self._task.done():
            return
        joined = asyncio.ensure_future(self._outbox.join())
        try:
            await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()

    def drain(self, seconds: float) -> None:
        """From now on, a transaction that keeps failing is given up after `seconds` (the earliest of the
        deadlines asked for)."""
        if self._give_up_at is None or time.monotonic() + seconds < self._give_up_at:
            self._give_up_at = time.monotonic() + seconds
            self._wake.set()

    async def _run(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            await asyncio.sleep(GATHER_SECONDS)  # let a burst of outcomes gather into one transaction
            while len(batch) < WRITE_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                dropped = await self._store(batch)
            except Exception:  # a bug: give these up (they will be sent again), keep the writer alive
                log.critical("storing %d outcomes crashed; they are given up", len(batch), exc_info=True)
                dropped = batch
            if dropped:
                log.warning("%d outcomes not stored: their rows were taken back or given up", len(dropped))
            gone = {id(o) for o in dropped}
            self._on_stored([o for o in batch if id(o) not in gone], dropped)
            for _ in batch:
                self._outbox.task_done()

    async def _store(self, batch: list[Outcome]) -> list[Outcome]:
        """Store what can be stored; returns the outcomes that were not."""
        try:
            return await self._retrying(claims.record, batch)
        except Exception as exc:
            if is_transient(exc):  # given up while draining
                log.error("giving up storing %d outcomes (%s): sent again later", len(batch), first_line(exc))
                return batch
            return await self._store_apart(batch, exc)

    async def _store_apart(self, batch: list[Outcome], exc: Exception) -> list[Outcome]:
        """A value the database refuses: find the outcome that cannot be stored by halving the batch."""
        if len(batch) > 1:
            mid = len(batch) // 2
            return await self._store(batch[:mid]) + await self._store(batch[mid:])
        outcome = batch[0]
        reason = f"the answer could not be stored: {first_line(exc)}"
        log.error("request %d: %s; stored as failed", outcome.request_id, reason)
        try:
            stored = await self._retrying(claims.fail_unstorable, outcome, reason)
        except Exception:
            log.critical("request %d could not be stored even as failed", outcome.request_id, exc_info=True)
            return batch
        return [] if stored else batch

    async def _retrying(self, call: Callable[..., T], *args: object) -> T:
        """`call(db, *args)` in a thread, tried again on transient errors (until given up, when draining)."""
        delay = 0.5
        while True:
            try:
                result = await asyncio.to_thread(call, self.db, *args)
            except Exception as exc:
                if not is_transient(exc) or self._given_up():
                    raise
                self._health.failed(STORING, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            self._health.worked(STORING)
            return result

    def _given_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at


def report_death(task: asyncio.Task[None]) -> None:
    """A background task must only end by cancellation; say loudly if one crashed."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task %s crashed", task.get_coro(), exc_info=task.exception())
