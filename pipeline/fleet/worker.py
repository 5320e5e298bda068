"""A worker process: Celery consumes chunk messages; one engine on one event loop sends their requests.

Celery runs tasks in a thread pool (one thread per chunk being worked on); every thread hands its chunk to
the process's single event loop, where one Engine (one HTTP pool, one max-in-flight budget) serves all of
them. A keeper on the same loop re-queues rows whose worker died (lease expired) and re-publishes rows whose
message was lost. On SIGTERM Celery stops consuming and we drain: in-flight requests finish and are stored,
unsent rows go back to queued and their chunk message back to the broker (Reject with requeue).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import Celery, signals
from celery.exceptions import Reject

from pipeline.dispatch import serve_metrics
from pipeline.fleet.broker import TASK_NAME, publish_chunks, queue_size
from pipeline.ratelimit import make_limiter, shared_redis_url
from pipeline.send.engine import Engine
from pipeline.send.runner import new_event_loop
from pipeline.settings import Settings
from pipeline.spend import make_budget
from pipeline.store import recovery
from pipeline.store.db import Database, open_database
from pipeline.store.models import RequestStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerRuntime:
    """The event loop thread, the engine and the keeper of one worker process."""

    def __init__(self, settings: Settings, app: Celery, queues: list[str]) -> None:
        self.settings = settings
        self.app = app
        self.queues = queues
        self.db: Database = open_database(settings.db_url)
        self.loop = new_event_loop()
        self.engine: Engine | None = None
        self.metrics = serve_metrics(settings)
        self._thread = threading.Thread(target=self.loop.run_forever, name="pipeline-engine", daemon=True)
        self._keeper: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._thread.start()
        self.engine = self._call(self._open_engine())
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep(), self.loop)

    def run_chunk(self, batch_id: str, ids: list[int]) -> None:
        """Claim and work the chunk; raise Reject(requeue) if rows went back to the queue (drain, pause).

        A claim that keeps failing (the database down) is retried until the worker drains; then the message
        goes back to the broker rather than being acknowledged with its rows unsent.
        """
        assert self.engine is not None
        try:
            rows = self._call(self.engine.claim(ids))
        except Exception as exc:
            raise Reject(f"claiming the chunk failed: {exc!r}", requeue=True) from None
        if not rows:
            return
        outcomes = self._call(self.engine.process(rows))
        released = sum(1 for o in outcomes if o.status == RequestStatus.QUEUED)
        if released and self.engine.draining:
            raise Reject(f"{released} rows released while draining", requeue=True)

    def drain(self) -> None:
        if self.engine is not None:
            self.loop.call_soon_threadsafe(self.engine.drain)

    def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self.engine is not None:
            self._call(self.engine.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if self.metrics is not None:
            self.metrics.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _open_engine(self) -> Engine:
        # One budget for every worker: the limiter and the spend caps live in Redis when there is one.
        shared = shared_redis_url(self.settings)
        limiter, budget = make_limiter(self.settings, shared), make_budget(shared)
        engine = Engine(self.settings, self.db, limiter, budget, self.metrics)
        return await engine.__aenter__()

    async def _keep(self) -> None:
        """Every quarter lease: bury dead engines (their rows go back to the queue and to the broker), and
        re-publish rows whose message was lost."""
        period = max(0.5, self.settings.lease_seconds / 4)
        reaper = recovery.Reaper(self.db, self.settings.lease_seconds)
        while True:
            await asyncio.sleep(period)
            assert self.engine is not None
            try:
                await asyncio.to_thread(self._recover, reaper, frozenset({self.engine.worker}), period)
            except Exception:  # the broker or database is restarting: try again next period
                log.warning("recovery pass failed", exc_info=True)

    def _recover(self, reaper: recovery.Reaper, spare: frozenset[str], period: float) -> None:
        rows = reaper.sweep(spare)
        if all(queue_size(self.app, q) == 0 for q in self.queues):
            rows += recovery.take_unsent(self.db, older_than=8 * period)
        by_batch: dict[str, list[int]] = defaultdict(list)
        for batch_id, request_id in rows:
            by_batch[batch_id].append(request_id)
        broker = recovery.broker_batches(self.db, by_batch)
        for batch_id, ids in by_batch.items():
            if batch_id in broker:  # a `pipeline run` batch is picked up by its run
                log.warning("re-publishing %d rows of batch %s", len(ids), batch_id)
                recovery.stamp_enqueued(self.db, ids)
                publish_chunks(self.app, batch_id, sorted(ids), self.settings.chunk_size, self.queues[0])


def install(app: Celery, settings: Settings, queues: list[str]) -> WorkerRuntime:
    """Register the chunk task and the shutdown hooks on `app`, and start this process's engine.

    Celery's thread pool runs tasks in this process, so the runtime is shared by every task thread.
    """
    runtime = WorkerRuntime(settings, app, queues)

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_chunk(batch_id: str, ids: list[int]) -> None:
        runtime.run_chunk(batch_id, ids)

    @signals.worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _shutting_down(**_: Any) -> None:
        runtime.drain()

    @signals.worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _shutdown(**_: Any) -> None:
        runtime.stop()

    runtime.start()
    return runtime
