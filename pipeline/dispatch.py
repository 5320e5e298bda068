"""Sending a batch's queued rows the way the batch was made: in this process, or through the broker.

`run_here` runs the engine on this process's event loop until every claimable row is final (`pipeline run`,
and `retry`/`resume` of such a batch); `run_batch_api_here` does the same for a batch sent through the Batch
API (its parts, and its rows marked direct); `enqueue` publishes capacity for the queued rows in broker
messages for the workers (`pipeline submit`, and `retry`/`resume` of a submitted batch, on the queue it was
submitted to), who also advance the parts that `plan_parts` makes of a batch-api batch. The caller picks the
limiter here: one process paces itself unless PIPELINE_REDIS_URL shares a budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.accounts import pool_from_settings
from pipeline.errors import ConfigError, PermanentError
from pipeline.ratelimit import make_limiter
from pipeline.send.engine import Engine, EngineStats
from pipeline.send.runner import new_event_loop, run_batch
from pipeline.settings import Settings
from pipeline.spend import make_budget
from pipeline.store import batches, fair, recovery
from pipeline.store.db import Database
from pipeline.store.models import Batch

if TYPE_CHECKING:  # the Batch API, Celery and prometheus_client load only where they are used
    from celery import Celery

    from pipeline.batchapi.driver import OnChange
    from pipeline.batchapi.runner import Finish
    from pipeline.send.metrics import Metrics

log = logging.getLogger(__name__)


def connect_broker(settings: Settings) -> Celery:
    """The Celery app for these settings, its broker reached once (ConnectError naming it if not)."""
    # Celery (and kombu, amqp) load only to reach a broker: `pipeline run` sends in-process without them.
    from pipeline.fleet.broker import check_broker, make_celery

    app = make_celery(settings)
    check_broker(app)
    return app


def enqueue(app: Celery, settings: Settings, db: Database, batch_id: str, queue: str | None = None) -> int:
    """Mark the batch as sent through the broker and publish capacity for its queued rows that engines may
    send; returns the messages sent. The queue is `queue`, else the one the batch was submitted to, else
    the default. Of a batch-api batch only the rows marked direct count: make its parts first
    (`plan_parts`); the workers advance them."""
    from pipeline.fleet.broker import DEFAULT_QUEUE, publish_capacity

    queue = queue or fair.batch_queues(db, [batch_id]).get(batch_id) or DEFAULT_QUEUE
    rows = recovery.mark_enqueued(db, batch_id, queue)
    return publish_capacity(app, batch_id, rows, settings.chunk_size, queue)


def plan_parts(db: Database, batch_id: str) -> int:
    """Cut the queued rows of a batch-api batch into Batch API parts now; returns how many were made."""
    from pipeline.batchapi import plan

    return len(plan.plan_parts(db, batches.get_batch(db, batch_id)))


def run_here(
    settings: Settings,
    db: Database,
    batch_id: str,
    on_start: Callable[[Engine], None] | None = None,
    *,
    signals: bool = True,
) -> EngineStats:
    """Send the batch's claimable rows in this process until none is left; SIGINT/SIGTERM drain first
    (when `signals`: off the main thread, e.g. the Python API's background run, there are none).

    The rate limit and the spend cap are this process's own unless PIPELINE_REDIS_URL shares them; with
    `settings.metrics_port` the engine's metrics are served while it runs.
    """
    pool_from_settings(settings).require_keys()
    metrics = serve_metrics(settings)

    async def run() -> EngineStats:
        limiter = make_limiter(settings, settings.redis_url)
        budget = make_budget(settings.redis_url)
        return await run_batch(
            settings,
            db,
            batch_id,
            limiter,
            budget=budget,
            metrics=metrics,
            on_start=on_start,
            signals=signals,
        )

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(run())
    finally:
        if metrics is not None:
            metrics.close()


def cancel_remote(settings: Settings, batch: Batch, remote_ids: list[str]) -> int:
    """Ask the Batch API to cancel these remote batches of `batch`; returns how many it accepted.

    One the API refuses (it has ended meanwhile) is skipped: its answers are stored like any others.
    """
    from pipeline.batchapi.client import BatchClient

    key = settings.require_api_key()

    async def cancel() -> int:
        accepted = 0
        async with BatchClient(settings, key, batch.base_url, batch.organization) as client:
            for remote_id in remote_ids:
                try:
                    await client.cancel(remote_id)
                    accepted += 1
                except PermanentError as exc:
                    log.warning("remote batch %s not cancelled: %s", remote_id, exc.message)
        return accepted

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(cancel())


def run_batch_api_here(
    settings: Settings,
    db: Database,
    batch_id: str,
    on_change: OnChange | None = None,
    *,
    signals: bool = True,
) -> Finish:
    """Carry a batch-api batch through the Batch API in this process until done, or until a signal."""
    from pipeline.batchapi.runner import run_batch_api

    settings.require_api_key()

    async def run() -> Finish:
        limiter = make_limiter(settings, settings.redis_url)
        return await run_batch_api(settings, db, batch_id, limiter, on_change=on_change, signals=signals)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run())


def serve_metrics(settings: Settings) -> Metrics | None:
    """The engine's Prometheus metrics, served on `settings.metrics_host`:`settings.metrics_port` (loopback
    unless another address is set); None when no port is set."""
    if settings.metrics_port is None:
        return None
    from pipeline.send.metrics import Metrics

    metrics = Metrics()
    try:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.metrics_host} port {settings.metrics_port}: "
            f"{exc.strerror or exc}"
        ) from None
    return metrics
