"""A worker process: Celery consumes capacity messages; one engine on one event loop sends what they claim.

Celery runs tasks in a thread pool (one thread per message being worked on); every thread hands its
message's capacity to the process's single event loop, which claims rows by fair share in pieces (`_work`)
for one Engine (one HTTP pool, one max-in-flight budget) serving all of them. A keeper on the same loop
re-queues rows whose worker died and re-publishes capacity for them, and for rows whose message was lost;
a second one advances the Batch API parts of submitted batch-api batches. On SIGTERM Celery stops
consuming and we drain: in-flight requests finish and are stored, unsent rows go back to queued and their
message back to the broker (Reject with requeue); parts are let go.
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
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline import retrying
from pipeline.batchapi import plan
from pipeline.batchapi.driver import PartDriver
from pipeline.dispatch import serve_metrics
from pipeline.fleet.broker import TASK_NAME, publish_capacity, queue_size
from pipeline.ratelimit import make_limiter, shared_redis_url
from pipeline.send.engine import Engine
from pipeline.send.runner import new_event_loop
from pipeline.settings import Settings
from pipeline.spend import make_budget
from pipeline.store import batches, fair, parts, recovery
from pipeline.store.claims import Outcome
from pipeline.store.db import Database, is_transient, open_database
from pipeline.store.models import RequestStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Pieces a message's worth of rows is claimed in (see `WorkerRuntime._work`).
PIECES = 4
#: While the engine's backlog is full, how often to look for running batches it has no rows of (seconds).
STARVED_CHECK_SECONDS = 1.0


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
        #: messages claim one at a time, first come first served (the lock binds to the engine's loop)
        self._claiming = asyncio.Lock()

    def start(self) -> None:
        self._thread.start()
        self.engine = self._call(self._open_engine())
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep(), self.loop)
        self._parts = asyncio.run_coroutine_threadsafe(self._drive_parts(), self.loop)

    def run_chunk(self, batch_id: str, work: int | list[int], queue: str | None = None) -> None:
        """Claim up to `work` rows by fair share on `queue`, piece by piece, and work them (`batch_id` is
        only a hint; an older message's list of ids counts as capacity for as many); raise
        Reject(requeue) if the worker drains before the capacity is used or its rows are stored.

        A claim that keeps failing (the database down) is retried until the worker drains; then the message
        goes back to the broker rather than being acknowledged with its rows unsent.
        """
        assert self.engine is not None
        capacity = work if isinstance(work, int) else len(work)
        try:
            outcomes, left = self._call(self._work(capacity, queue or self.queues[0], batch_id))
        except Exception as exc:
            raise Reject(f"claiming the chunk failed: {exc!r}", requeue=True) from None
        released = sum(1 for o in outcomes if o.status == RequestStatus.QUEUED)
        if self.engine.draining and (released or left):
            raise Reject(f"draining: {released} rows released, capacity for {left} unused", requeue=True)

    async def _work(self, capacity: int, queue: str, hint: str) -> tuple[list[Outcome], int]:
        """Claim `capacity` in pieces, each when the engine's backlog (rows not yet through the limiter)
        runs below a message's worth; the oldest message claims first, so messages end one after the
        other. Returns the outcomes and the capacity left unclaimed (no rows left, or draining).

        Claims follow the engine's need, not the thread's own rows: each running batch keeps rows waiting
        for its turn at the limiter, a batch submitted meanwhile is claimed within a piece's time, and a
        batch with a small share never holds the threads.
        """
        assert self.engine is not None
        engine, piece = self.engine, max(1, -(-self.settings.chunk_size // PIECES))
        left, working = capacity, []
        try:
            async with self._claiming:  # FIFO: the oldest message uses its capacity first
                while left > 0 and not engine.draining:
                    room = await engine.backlog.below(self.settings.chunk_size, STARVED_CHECK_SECONDS)
                    await engine.writable()  # while answers cannot be stored, claim nothing
                    if engine.draining:
                        break
                    # A full backlog may be rows waiting on a slow key: a batch this engine has no rows
                    # of (another key's, or a newcomer's) is claimed anyway, so it is never starved here.
                    rows = await engine.claim_share(min(piece, left), queue, hint=hint, missing_only=not room)
                    if not rows:
                        if room:
                            break  # nothing queued on the queue: the capacity is not needed
                        continue
                    left -= len(rows)
                    working.append(asyncio.ensure_future(engine.process(rows)))
        finally:  # a claim that failed leaves the pieces claimed before it to finish
            done = await asyncio.gather(*working, return_exceptions=True)
        outcomes = [o for result in done if not isinstance(result, BaseException) for o in result]
        failed = [result for result in done if isinstance(result, BaseException)]
        if failed:
            raise failed[0]
        return outcomes, left

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
            except Exception as exc:  # the broker or database is restarting: try again next period
                retrying.report(log, "recovery pass", exc)

    def _recover(self, reaper: recovery.Reaper, spare: frozenset[str], period: float) -> None:
        rows = reaper.sweep(spare)
        if all(queue_size(self.app, q) == 0 for q in self.queues):
            rows += recovery.take_unsent(self.db, older_than=8 * period, queues=self.queues)
        by_batch: dict[str, list[int]] = defaultdict(list)
        for batch_id, request_id in rows:
            by_batch[batch_id].append(request_id)
        queues = fair.batch_queues(self.db, by_batch)
        for batch_id, ids in by_batch.items():
            queue = queues.get(batch_id)
            if queue is not None:  # a `pipeline run` batch is picked up by its run
                log.warning("re-publishing %d rows of batch %s", len(ids), batch_id)
                recovery.stamp_enqueued(self.db, ids)
                publish_capacity(self.app, batch_id, len(ids), self.settings.chunk_size, queue)

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
                except Exception as exc:  # the database or the API is failing: try again next tick
                    retrying.report(log, "advancing Batch API parts", exc)

    async def _tick_parts(self, driver: PartDriver) -> None:
        for batch_id in await asyncio.to_thread(parts.batches_to_plan, self.db):
            batch = await asyncio.to_thread(batches.get_batch, self.db, batch_id)
            await asyncio.to_thread(plan.plan_parts, self.db, batch)
        for part_id in await asyncio.to_thread(parts.due_parts, self.db):
            try:
                await driver.advance(part_id)
            except Exception as exc:  # one part's trouble (a bad key, a refused call) stops no other
                retrying.report(log, f"advancing Batch API part {part_id}", exc)

    async def _publish_direct(self, batch_id: str, ids: list[int]) -> None:
        """Rows of a part to be sent directly now (expired under --on-expire direct): to the broker."""

        def publish() -> None:
            recovery.stamp_enqueued(self.db, ids)
            queue = fair.batch_queues(self.db, [batch_id]).get(batch_id) or self.queues[0]
            publish_capacity(self.app, batch_id, len(ids), self.settings.chunk_size, queue)

        await asyncio.to_thread(publish)


def _outage(exc: BaseException) -> bool:
    """The database or the broker unreachable or restarting: one line in the log, not a traceback."""
    return is_transient(exc) or isinstance(exc, BrokerError | RedisConnectionError | RedisTimeoutError)


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
    def run_chunk(batch_id: str, work: int | list[int], queue: str | None = None) -> None:
        slot.get().run_chunk(batch_id, work, queue)

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
