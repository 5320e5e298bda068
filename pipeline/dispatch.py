"""Sending a batch's queued rows the way the batch was made: in this process, or through the broker.

`run_here` runs the engine on this process's event loop until every claimable row is final (`pipeline run`,
and `retry`/`resume` of such a batch); `enqueue` publishes capacity for the queued rows in broker messages
for the workers (`pipeline submit`, and `retry`/`resume` of a submitted batch, on the queue it was submitted
to). The caller picks the limiter here: one process paces itself unless PIPELINE_REDIS_URL shares a budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from celery import Celery

from pipeline.fleet.broker import DEFAULT_QUEUE, check_broker, make_celery, publish_capacity
from pipeline.ratelimit import make_limiter
from pipeline.send.engine import Engine, EngineStats
from pipeline.send.runner import new_event_loop, run_batch
from pipeline.settings import Settings
from pipeline.store import fair, recovery
from pipeline.store.db import Database


def connect_broker(settings: Settings) -> Celery:
    """The Celery app for these settings, its broker reached once (ConnectError naming it if not)."""
    app = make_celery(settings)
    check_broker(app)
    return app


def enqueue(app: Celery, settings: Settings, db: Database, batch_id: str, queue: str | None = None) -> int:
    """Mark the batch as sent through the broker and publish capacity for its queued rows; returns the
    messages sent. The queue is `queue`, else the one the batch was submitted to, else the default."""
    queue = queue or fair.batch_queues(db, [batch_id]).get(batch_id) or DEFAULT_QUEUE
    rows = recovery.mark_enqueued(db, batch_id, queue)
    return publish_capacity(app, batch_id, rows, settings.chunk_size, queue)


def run_here(
    settings: Settings, db: Database, batch_id: str, on_start: Callable[[Engine], None] | None = None
) -> EngineStats:
    """Send the batch's claimable rows in this process until none is left; SIGINT/SIGTERM drain first."""
    settings.require_api_key()

    async def run() -> EngineStats:
        limiter = make_limiter(settings, settings.redis_url)
        return await run_batch(settings, db, batch_id, limiter, on_start=on_start)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run())
