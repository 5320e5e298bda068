"""Running one batch in this process with the engine: `pipeline run`'s loop.

Rows are claimed a chunk at a time, so a million-line batch holds at most a few thousand rows in memory.
When a scan reaches the end it waits for the engine to go idle and scans again from the start: rows
released by a drain or a pause, or freed from a dead engine, are picked up until none is left. Rows other
engines hold are waited for; a reaper (store/recovery.py) frees them at once if their process on this host
is gone (a rerun after a kill takes over in a second), or after a lease without a heartbeat.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.ratelimit import Limiter
from pipeline.send.engine import Engine, EngineStats
from pipeline.settings import Settings
from pipeline.spend import Budget
from pipeline.store import batches, claims, settle
from pipeline.store.db import Database
from pipeline.store.models import BatchState
from pipeline.store.recovery import Reaper

if TYPE_CHECKING:  # prometheus_client is loaded only when metrics are served
    from pipeline.send.metrics import Metrics

log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (about twice the HTTP throughput per core), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS only
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_batch(
    settings: Settings,
    db: Database,
    batch_id: str,
    limiter: Limiter,
    *,
    budget: Budget | None = None,
    metrics: Metrics | None = None,
    on_start: Callable[[Engine], None] | None = None,
    signals: bool = True,
) -> EngineStats:
    """Send every row of the batch until all are final; SIGINT/SIGTERM drain first (when `signals`).

    A database that refuses writes for `write_stall_seconds` stops the run: `stats.stalled` says why.
    """
    engine = Engine(settings, db, limiter, budget, metrics, stop_on_stall=True)
    # The handlers stay until the engine has stored what was in flight: a second SIGINT during that wait
    # must interrupt between two callbacks of the loop. With Python's own handler back, its
    # KeyboardInterrupt would strike inside one (a protocol's data_received swallows it; a task's step cut
    # short never ends, and the loop's shutdown waits on it forever), and a SIGTERM would kill the process
    # with answers unstored.
    with _draining_on_signals(engine, signals) as caught:
        async with engine:
            if on_start is not None:
                on_start(engine)
            await feed(settings, db, batch_id, engine)
    engine.stats.stopped_by = caught.signal
    try:  # the writer settles the state after each write; if the last one could not, this does
        await asyncio.to_thread(settle.settle_states, db, [batch_id])
    except Exception as exc:
        log.warning("could not settle the state of batch %s (%r)", batch_id, exc)
    return engine.stats


async def feed(
    settings: Settings, db: Database, batch_id: str, engine: Engine, *, direct_only: bool = False
) -> None:
    """Claim and send the batch's queued rows with `engine` until none is left or it drains.

    `direct_only`: only the rows of a batch-api batch marked to be sent directly (its parts hold the rest).
    """
    reaper = Reaper(db)
    period = max(0.5, settings.lease_seconds / 4)
    started = time.monotonic()
    await sweep(reaper, engine)
    after, told = 0, False
    while not engine.draining:
        if engine.paused_since(batch_id, started):
            # A run that paused the batch stops: a resume sends it anew. Were it to go on, it would claim
            # the rows a resume meanwhile gave back, and send them the way that paused the batch.
            await engine.join()
            return
        await engine.writable()  # no new rows while answers cannot be stored
        ids = await asyncio.to_thread(
            functools.partial(claims.queued_ids, direct_only=direct_only),
            db,
            batch_id,
            after,
            settings.chunk_size,
        )
        if ids:
            try:
                rows = await engine.claim(ids)
            except Exception:
                if engine.stalled:  # the database refused the claims too long: the run stops
                    return
                raise
            await engine.submit(rows)
            after = ids[-1]
            continue
        await engine.join()
        states = await asyncio.to_thread(batches.batch_states, db, [batch_id])
        if states.get(batch_id) != BatchState.IN_PROGRESS:
            return
        if after:  # a scan ended: look again from the start for rows released meanwhile
            after = 0
            continue
        held = await asyncio.to_thread(
            functools.partial(batches.running_count, direct_only=direct_only), db, batch_id
        )
        if not held:
            return
        if not told:
            log.warning("%d requests of batch %s are held by other engines; waiting for them", held, batch_id)
            told = True
        await asyncio.sleep(period)
        await sweep(reaper, engine)


async def sweep(reaper: Reaper, engine: Engine) -> None:
    """Free the rows (and parts) of dead engines but `engine`; a failing database is only logged (the next
    sweep tries again)."""
    try:
        await asyncio.to_thread(reaper.sweep, frozenset({engine.worker}))
    except Exception as exc:
        log.warning("looking for dead engines failed (%r)", exc)


class _draining_on_signals:
    """First SIGINT or SIGTERM drains the engine; a second SIGINT interrupts at once (KeyboardInterrupt:
    every transaction is atomic, and a rerun takes over the rows this process held)."""

    def __init__(self, engine: Engine, install: bool = True) -> None:
        self.engine = engine
        #: off the main thread there are no signals to handle (the Python API's background run)
        self.install = install
        #: the signal that stopped the run, if one did
        self.signal: int | None = None

    def __enter__(self) -> _draining_on_signals:
        if self.install:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def _on_signal(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        if self.engine.draining and sig == signal.SIGINT:
            loop.remove_signal_handler(signal.SIGINT)
            raise KeyboardInterrupt
        self.signal = self.signal or sig
        log.warning("%s: finishing the requests in flight, then stopping", signal.Signals(sig).name)
        self.engine.drain()

    def __exit__(self, *exc_info: object) -> None:
        if self.install:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
