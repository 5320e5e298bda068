"""`pipeline run --via batch-api`: plan the batch into parts, advance them, send its direct rows, until done.

One loop, a tick at a time: free the parts and rows of dead engines (a rerun after a kill takes over at
once), make parts of queued rows, advance every part that is due (upload, create, poll, store its
answers), and send the rows marked direct (audio under --audio-direct, lines expired under --on-expire
direct) with the engine. It ends when no part is open and no row is left to send, or on SIGINT/SIGTERM:
then the remote batches keep running, the parts keep their rows, and the same command run again carries
on from what was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.batchapi import plan
from pipeline.batchapi.driver import OnChange, PartDriver
from pipeline.ratelimit import Limiter
from pipeline.send.engine import Engine
from pipeline.send.runner import feed, sweep
from pipeline.settings import Settings
from pipeline.store import batches, claims, parts
from pipeline.store.db import Database, first_line, is_transient
from pipeline.store.models import BatchState
from pipeline.store.recovery import Reaper

log = logging.getLogger(__name__)

#: Longest sleep between two ticks (a part's own poll backoff decides when it is polled).
TICK_SECONDS = 1.0


@dataclass(frozen=True)
class Finish:
    """How a run ended: stopped by a signal, and parts still open at the Batch API."""

    interrupted: bool
    open_parts: int


async def run_batch_api(
    settings: Settings,
    db: Database,
    batch_id: str,
    limiter: Limiter,
    *,
    on_change: OnChange | None = None,
    signals: bool = True,
) -> Finish:
    """Carry the batch through the Batch API until it is done, or a signal stops the waiting."""
    engine = Engine(settings, db, limiter)
    stopper = _Stopper(engine)
    # The handlers stay until the engine and the driver have finished what was under way (see
    # send/runner.py's run_batch: a second SIGINT must interrupt between two callbacks, never inside one).
    with stopper.on_signals() if signals else contextlib.nullcontext():
        async with engine:
            async with PartDriver(settings, db, engine.ownership, on_change=on_change) as driver:
                stopper.driver = driver
                if stopper.stopped.is_set():  # a signal came before the driver was there to stop
                    driver.stop()
                await _loop(settings, db, batch_id, engine, driver, stopper)
    return Finish(stopper.stopped.is_set(), await asyncio.to_thread(parts.open_count, db, batch_id))


async def _loop(
    settings: Settings, db: Database, batch_id: str, engine: Engine, driver: PartDriver, stopper: _Stopper
) -> None:
    reaper = Reaper(db)
    tick = min(TICK_SECONDS, settings.batch_poll_seconds)
    while not stopper.stopped.is_set():
        try:
            if await _tick(settings, db, batch_id, engine, driver, stopper, reaper):
                return
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database is restarting or busy: the parts wait at the Batch API meanwhile.
            log.warning("advancing batch %s failed (%s); trying again", batch_id, first_line(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopper.stopped.wait(), tick)


async def _tick(
    settings: Settings,
    db: Database,
    batch_id: str,
    engine: Engine,
    driver: PartDriver,
    stopper: _Stopper,
    reaper: Reaper,
) -> bool:
    """One round; True when the batch is done."""
    await sweep(reaper, engine)
    batch = await asyncio.to_thread(batches.get_batch, db, batch_id)
    if batch.state == BatchState.IN_PROGRESS:
        await asyncio.to_thread(plan.plan_parts, db, batch)
    for part_id in await asyncio.to_thread(parts.due_parts, db, batch_id):
        if stopper.stopped.is_set():
            return False
        await driver.advance(part_id)
    if await asyncio.to_thread(claims.queued_ids, db, batch_id, 0, 1, direct_only=True):
        await feed(settings, db, batch_id, engine, direct_only=True)
    return await asyncio.to_thread(_done, db, batch_id)


def _done(db: Database, batch_id: str) -> bool:
    """No part is open, and no row is left to send (or the batch no longer sends: paused, cancelled)."""
    if parts.open_count(db, batch_id):
        return False
    counts = batches.status_counts(db, batch_id)
    active = batches.batch_states(db, [batch_id]).get(batch_id) == BatchState.IN_PROGRESS
    return not active or counts["queued"] + counts["running"] == 0


class _Stopper:
    """First SIGINT or SIGTERM: stop waiting (the remote batches keep running); a second SIGINT: at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: the part driver, once it runs
        self.driver: PartDriver | None = None
        self.stopped = asyncio.Event()

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.stopped.is_set() and sig == signal.SIGINT:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
            raise KeyboardInterrupt
        self.stopped.set()
        if self.driver is not None:
            self.driver.stop()
        self.engine.drain()
