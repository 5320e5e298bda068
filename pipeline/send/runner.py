"""Running one batch in this process with the engine: `pipeline run`'s loop.

Rows are claimed a chunk at a time, so a million-line batch holds at most a few thousand rows in memory.
When the scan reaches the end it waits for the engine to go idle and scans again from the start: rows
released by a drain or a pause, or whose lease expired after a crash, are picked up until none is left.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from pipeline.ratelimit import Limiter
from pipeline.send.engine import Engine, EngineStats
from pipeline.settings import Settings
from pipeline.store import batches, claims
from pipeline.store.db import Database
from pipeline.store.models import BatchState


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
    on_start: Callable[[Engine], None] | None = None,
) -> EngineStats:
    """Send every claimable row of the batch until none is left; SIGINT/SIGTERM drain first."""
    async with Engine(settings, db, limiter) as engine:
        if on_start is not None:
            on_start(engine)
        with _draining_on_signals(engine):
            await _feed(settings, db, batch_id, engine)
    return engine.stats


async def _feed(settings: Settings, db: Database, batch_id: str, engine: Engine) -> None:
    after, found_since_start = 0, False
    while not engine.draining:
        ids = await asyncio.to_thread(claims.claimable_ids, db, batch_id, after, settings.chunk_size)
        if ids:
            rows = await asyncio.to_thread(claims.claim, db, ids, engine.worker, settings.lease_seconds)
            await engine.submit(rows)
            after, found_since_start = ids[-1], True
            continue
        await engine.join()
        states = await asyncio.to_thread(batches.batch_states, db, [batch_id])
        if states.get(batch_id) != BatchState.ACTIVE or not found_since_start:
            return
        after, found_since_start = 0, False


class _draining_on_signals:
    """First SIGINT or SIGTERM drains the engine; a second SIGINT interrupts at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        if self.engine.draining and sig == signal.SIGINT:
            loop.remove_signal_handler(signal.SIGINT)
            raise KeyboardInterrupt
        self.engine.drain()

    def __exit__(self, *exc_info: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
