"""A worker process: Celery consumes chunk messages; one engine on one event loop sends their requests.

Celery runs tasks in a thread pool (one thread per chunk being worked on); every thread hands its chunk to
the process's single event loop, where one Engine (one HTTP pool, one max-in-flight budget) serves all of
them. A keeper on the same loop re-queues rows whose worker died (lease expired) and re-publishes rows whose
message was lost; a second one advances the Batch API parts of submitted batch-api batches. On SIGTERM
Celery stops consuming and we drain: in-flight requests finish and are stored, unsent rows go back to
queued and their chunk message back to the broker (Reject with requeue); parts are let go.
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

from pipeline.batchapi import plan
from pipeline.batchapi.driver import PartDriver
from pipeline.dispatch import serve_metrics
from pipeline.fleet.broker import TASK_NAME, publish_chunks, queue_size
from pipeline.ratelimit import make_limiter, shared_redis_url
from pipeline.send.engine import Engine
from pipeline.send.runner import new_event_loop
from pipeline.settings import Settings
from pipeline.spend import make_budget
from pipeline.store import batches, parts, recovery
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
        self._parts: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._thread.start()
        self.engine = self._call(self._open_engine())
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep(), self.loop)
        self._parts = asyncio.run_coroutine_threadsafe(self._drive_parts(), self.loop)

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
        if self._parts is not None:  # parts wait at the Batch API; another worker carries on with them
            self._parts.cancel()

    def stop(self) -> None:
        for task in (self._keeper, self._parts):
            if task is not None:
                task.cancel()
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
        reaper = recovery.Reaper(self.db)
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

    async def _drive_parts(self) -> None:
        """Every tick: cut batch-api broker batches' queued rows into parts, and advance every part that
        is due (upload, create, poll, store), one engine at a time per part, held under this engine's id."""
        assert self.engine is not None
        period = max(0.5, min(self.settings.lease_seconds / 4, self.settings.batch_poll_seconds))
        async with PartDriver(
            self.settings, self.db, self.engine.ownership, on_direct=self._publish_direct
        ) as driver:
            while True:
                await asyncio.sleep(period)
                try:
                    await self._tick_parts(driver)
                except Exception:  # the database or the API is failing: try again next tick
                    log.warning("advancing Batch API parts failed", exc_info=True)

    async def _tick_parts(self, driver: PartDriver) -> None:
        for batch_id in await asyncio.to_thread(parts.batches_to_plan, self.db):
            batch = await asyncio.to_thread(batches.get_batch, self.db, batch_id)
            await asyncio.to_thread(plan.plan_parts, self.db, batch)
        for part_id in await asyncio.to_thread(parts.due_parts, self.db):
            try:
                await driver.advance(part_id)
            except Exception:  # one part's trouble (a bad key, a refused call) must not stop the others
                log.warning("advancing Batch API part %s failed", part_id, exc_info=True)

    async def _publish_direct(self, batch_id: str, ids: list[int]) -> None:
        """Rows of a part to be sent directly now (expired under --on-expire direct): to the broker."""

        def publish() -> None:
            recovery.stamp_enqueued(self.db, ids)
            publish_chunks(self.app, batch_id, sorted(ids), self.settings.chunk_size, self.queues[0])

        await asyncio.to_thread(publish)


class RuntimeSlot:
    """Where the tasks registered on an app find the process's runtime once the worker has started it."""

    def __init__(self) -> None:
        self.runtime: WorkerRuntime | None = None

    def get(self) -> WorkerRuntime:
        if self.runtime is None:
            raise RuntimeError("the pipeline worker runtime was not started in this process")
        return self.runtime

    def start(self, app: Celery, settings: Settings, queues: list[str]) -> WorkerRuntime:
        self.runtime = WorkerRuntime(settings, app, queues)
        self.runtime.start()
        return self.runtime


def register(app: Celery) -> RuntimeSlot:
    """Register the chunk task and the shutdown hooks on `app`; the runtime starts later (`slot.start`).

    Celery's thread pool runs tasks in this process, so the runtime is shared by every task thread.
    """
    slot = RuntimeSlot()

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_chunk(batch_id: str, ids: list[int]) -> None:
        slot.get().run_chunk(batch_id, ids)

    @signals.worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _shutting_down(**_: Any) -> None:
        if slot.runtime is not None:
            slot.runtime.drain()

    @signals.worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _shutdown(**_: Any) -> None:
        if slot.runtime is not None:
            slot.runtime.stop()

    return slot


def install(app: Celery, settings: Settings, queues: list[str]) -> WorkerRuntime:
    """Register the task and hooks on `app` and start this process's engine (`pipeline worker`)."""
    return register(app).start(app, settings, queues)
