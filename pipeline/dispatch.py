"""Sending a batch's queued rows the way the batch was made: in this process, or through the broker.

`run_here` runs the engine on this process's event loop until every claimable row is final (`pipeline run`,
and `retry`/`resume` of such a batch); `enqueue` names the queued rows in broker messages for the workers
(`pipeline submit`, and `retry`/`resume` of a submitted batch). The caller picks the limiter here: one
process paces itself unless PIPELINE_REDIS_URL shares a budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from celery import Celery

from pipeline.errors import ConfigError
from pipeline.fleet.broker import check_broker, make_celery, publish_chunks
from pipeline.ratelimit import make_limiter
from pipeline.send.engine import Engine, EngineStats
from pipeline.send.metrics import Metrics
from pipeline.send.runner import new_event_loop, run_batch
from pipeline.settings import Settings
from pipeline.spend import make_budget
from pipeline.store import recovery
from pipeline.store.db import Database


def connect_broker(settings: Settings) -> Celery:
    """The Celery app for these settings, its broker reached once (ConnectError naming it if not)."""
    app = make_celery(settings)
    check_broker(app)
    return app


def enqueue(app: Celery, settings: Settings, db: Database, batch_id: str, queue: str | None = None) -> int:
    """Mark the batch as sent through the broker and publish its queued rows; returns the messages sent."""
    recovery.mark_enqueued(db, batch_id)
    return publish_chunks(app, batch_id, recovery.queued_ids(db, batch_id), settings.chunk_size, queue)


def run_here(
    settings: Settings, db: Database, batch_id: str, on_start: Callable[[Engine], None] | None = None
) -> EngineStats:
    """Send the batch's claimable rows in this process until none is left; SIGINT/SIGTERM drain first.

    The rate limit and the spend cap are this process's own unless PIPELINE_REDIS_URL shares them; with
    `settings.metrics_port` the engine's metrics are served while it runs.
    """
    settings.require_api_key()
    metrics = serve_metrics(settings)

    async def run() -> EngineStats:
        limiter = make_limiter(settings, settings.redis_url)
        budget = make_budget(settings.redis_url)
        return await run_batch(
            settings, db, batch_id, limiter, budget=budget, metrics=metrics, on_start=on_start
        )

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(run())
    finally:
        if metrics is not None:
            metrics.close()


def serve_metrics(settings: Settings) -> Metrics | None:
    """The engine's Prometheus metrics, served on `settings.metrics_port`; None when no port is set."""
    if settings.metrics_port is None:
        return None
    metrics = Metrics()
    try:
        metrics.serve(settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on port {settings.metrics_port}: {exc.strerror or exc}"
        ) from None
    return metrics
