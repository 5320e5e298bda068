"""The engine: sends claimed requests with hundreds in flight on one event loop and one pooled HTTP session.

The same engine serves `pipeline run` (in-process) and the Celery workers. Around every attempt, in order:
take a slot (max in flight) -> the batch still runs -> the account and its budget (routing.py: the first
account of the batch's pool whose limiter grants now, `limiter.acquire` for a lone account) -> the batch
still runs, its spend cap covers the attempt (accounting.py) and the row is still ours (ownership.py) ->
HTTP through that account (transport.py) -> classify and parse (responses.py) -> limiter.settle, the
account's gate and breaker, accounting.settle -> record the attempt. An account that answers 401/403,
insufficient_quota, 404 or trips its breaker is benched for the batch and the row goes to another. Every
acquire and reservation is settled on every path, exceptions included. tenacity owns retries
(RetryableError only, `backoff_delay` waits). Outcomes go to the writer (writer.py), which stores them
promptly in batched, fenced transactions; the watcher (watch.py) notices batches paused, cancelled or
re-capped by others. The caller chooses the limiter and the spend budget (`make_limiter`, `make_budget`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from pipeline.errors import (
    APIError,
    BatchBlocked,
    EndpointDown,
    ErrorType,
    RateLimited,
    RetryableError,
)
from pipeline.prices import load_prices
from pipeline.ratelimit import Limiter
from pipeline.ratelimit.rules import LimitKey
from pipeline.retrying import Policy, call_async
from pipeline.send.accounting import Accounting, EngineStats, Ticket
from pipeline.send.backlog import Backlog
from pipeline.send.claiming import retrying
from pipeline.send.classify import backoff_delay, wait_after_first
from pipeline.send.estimates import Estimator, Job, attempt_record, charged_tokens, usage
from pipeline.send.health import WriteHealth, pause_batches
from pipeline.send.ownership import Ownership
from pipeline.send.responses import Parsed, Usage, answer_of, result_row
from pipeline.send.routing import ACCOUNT_ERRORS, Rerouted, Routes, bench_account, overloaded
from pipeline.send.slots import Slots
from pipeline.send.transport import Transport
from pipeline.send.watch import Watch
from pipeline.send.writer import Writer, report_death
from pipeline.settings import Settings
from pipeline.spend import Budget
from pipeline.spend.local import LocalBudget
from pipeline.store import batches, blobs, claims, fair
from pipeline.store.claims import AttemptRecord, Claimed, Outcome
from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, BatchState, RequestStatus, utcnow

if TYPE_CHECKING:  # prometheus_client is loaded only when metrics are served
    from pipeline.send.metrics import Metrics

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class _Answer:
    """A 2xx answer: what `_attempt` hands back on success."""

    status: int
    headers: Mapping[str, str]
    raw: bytes
    parsed: Parsed


class _Stop(Exception):
    """The row must not be sent now: its batch was cancelled or paused, the engine drains, or the row is
    no longer this engine's (`status` None: nothing of it may be written)."""

    def __init__(self, status: RequestStatus | None, reason: str | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Engine:
    """`async with Engine(...) as engine:` then `await engine.submit(await engine.claim(ids))`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        limiter: Limiter,
        budget: Budget | None = None,
        metrics: Metrics | None = None,
        *,
        stop_on_stall: bool = False,
    ) -> None:
        """`stop_on_stall`: when the database refuses writes for `write_stall_seconds`, drain and give up
        what is unstored (`pipeline run`); otherwise wait for it to take writes again (a worker)."""
        self.settings = settings
        self.db = db
        self.limiter = limiter
        self._acct = Accounting(load_prices(settings), budget or LocalBudget(), metrics)
        self.stats = self._acct.stats
        self.draining = False
        self._estimates = Estimator(exact=bool(settings.tpm or settings.limits_file))
        self._held: dict[int, Claimed] = {}
        #: when this engine last paused each batch (time.monotonic())
        self._paused_at: dict[str, float] = {}
        #: when this engine's last claim of each batch began (time.monotonic())
        self._claimed_at: dict[str, float] = {}
        self._stop = asyncio.Event()
        self.backlog = Backlog(self._stop)  #: claimed rows not yet through the limiter
        self._tasks: set[asyncio.Task[Outcome | None]] = set()
        self._flushed = asyncio.Condition()
        self._room = asyncio.Event()
        self._slots = Slots(settings.max_in_flight)
        self._background: list[asyncio.Task[None]] = []
        self._own = Ownership(db, settings.lease_seconds)
        self._http = Transport(settings, functools.partial(blobs.load_blob, db))
        self._health = WriteHealth(settings.write_stall_seconds, self._on_stall)
        self._stop_on_stall = stop_on_stall
        self._writer = Writer(db, self._stored, self._health)
        self._watch = Watch(
            db,
            limiter,
            self._acct,
            lambda: {row.batch_id for row in self._held.values()},
            lambda: self.worker,
        )
        self._routes = Routes(settings, limiter, self._watch.keys.add)
        self._watch.routes = self._routes

    def __repr__(self) -> str:
        return f"Engine(worker={self.worker!r})"

    @property
    def worker(self) -> str:
        """The id this engine claims under now."""
        return self._own.worker

    @property
    def ownership(self) -> Ownership:
        """The engine's registration and heartbeat (others may hold Batch API parts under it)."""
        return self._own

    @property
    def stalled(self) -> str | None:
        """Why sending stopped, while the database refuses writes for too long (send/health.py)."""
        return self._health.stalled

    async def writable(self) -> None:
        """Return once the writer's transactions work (at once, usually), or the engine drains."""
        await self._health.wait_writable(self._stop)

    @property
    def in_flight(self) -> int:
        """Requests on the wire now."""
        return self._http.in_flight

    def limiter_views(self) -> dict[LimitKey, dict[str, Any]]:
        """What the limiter said of each key at the last save (limits in force, send rate)."""
        return self._watch.snapshots

    async def __aenter__(self) -> Engine:
        await self._own.__aenter__()
        await self._http.__aenter__()
        await self._writer.__aenter__()
        self._background = [asyncio.create_task(self._watch.run())]
        for task in self._background:
            task.add_done_callback(report_death)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.join()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._writer.__aexit__(None, None, None)
            with contextlib.suppress(Exception):
                await self._watch.save_limits()
            await self._http.__aexit__(None, None, None)
            await self._own.__aexit__(None, None, None)
            for shared in (self._acct.budget, self.limiter):  # Redis-backed ones hold connections
                aclose = getattr(shared, "aclose", None)
                if aclose is not None:
                    await aclose()

    def drain(self, seconds: float | None = None) -> None:
        """Send nothing new: in-flight requests finish and are stored (for at most `seconds`, default
        drain_seconds, when the database fails), the rest go back to the queue."""
        self.draining = True
        self._stop.set()
        self._writer.drain(self.settings.drain_seconds if seconds is None else seconds)

    def _on_stall(self, reason: str) -> None:
        """The database refused writes too long: pause the batches held here if that can be written (they
        are not sent here meanwhile), and with `stop_on_stall` give up what is unstored and stop."""
        log.error("%s: sending stopped", reason)
        self.stats.stalled = reason
        held = {row.batch_id for row in self._held.values()}
        self._watch.states.update(dict.fromkeys(held, BatchState.PAUSED))
        self._background.append(asyncio.get_running_loop().create_task(pause_batches(self.db, held, reason)))
        if self._stop_on_stall:
            self.drain(0.0)

    async def claim(self, ids: Sequence[int]) -> list[Claimed]:
        """Claim the queued rows among `ids` for this engine; a failing database is retried until drained."""
        return await self._claiming(lambda: claims.claim(self.db, ids, self.worker), f"{len(ids)} rows")

    async def claim_share(
        self, capacity: int, queue: str, hint: str | None = None, missing_only: bool = False
    ) -> list[Claimed]:
        """Claim up to `capacity` rows of the batches on `queue` by fair share (store/fair.py), retried
        like `claim`: the batch with the fewest rows waiting here for its priority first (only those
        with none waiting here, when `missing_only`)."""
        waiting = self.backlog.per_batch()
        return await self._claiming(
            lambda: fair.claim_share(
                self.db, self.worker, capacity, queue, waiting=waiting, hint=hint, missing_only=missing_only
            ),
            f"up to {capacity} rows",
        )

    async def _claiming(self, take: Callable[[], list[Claimed]], what: str) -> list[Claimed]:
        started = time.monotonic()
        rows = await retrying(take, what, self._own, self._sleep, lambda: self.draining, self._health)
        claimed = {row.batch_id for row in rows}
        self._claimed_at.update(dict.fromkeys(claimed, started))
        await self._watch.learn_priorities(claimed)
        return rows

    async def submit(self, rows: list[Claimed]) -> None:
        """Start working on claimed rows; waits while twice max-in-flight rows are already held."""
        await self._learn({row.batch_id for row in rows})
        for job in await self._prepare(rows):
            self._start(job)
        while len(self._tasks) >= 2 * self.settings.max_in_flight:
            self._room.clear()
            await self._room.wait()

    async def process(self, rows: list[Claimed]) -> list[Outcome]:
        """Work on claimed rows and return once every one is stored or dropped (a worker's chunk)."""
        await self._learn({row.batch_id for row in rows})
        jobs = await self._prepare(rows)
        outcomes = await asyncio.gather(*(self._start(job) for job in jobs))
        async with self._flushed:
            await self._flushed.wait_for(lambda: not any(row.id in self._held for row in rows))
        return [o for o in outcomes if o is not None]

    async def _learn(self, batch_ids: set[str]) -> None:
        """The state and cap of batches about to be sent, and the route (pool of accounts) of new ones; a
        failing database is tried again until the engine drains (the rows are claimed: never drop them)."""
        policy = Policy("reading the batches claimed", give_up=lambda: self.draining)
        await call_async(lambda: self._learn_once(batch_ids), policy, sleep=self._sleep)

    async def _learn_once(self, batch_ids: set[str]) -> None:
        await self._watch.learn(batch_ids)
        new = batch_ids - self._routes.by_batch.keys()
        if new:
            specs = await asyncio.to_thread(batches.pool_specs, self.db, new)
            for batch_id in new:
                route = self._routes.add(batch_id, specs.get(batch_id))
                self._estimates.exact |= any(account.tpm for account in route.pool.accounts)

    async def _prepare(self, rows: list[Claimed]) -> list[Job]:
        """The rows' jobs, estimated off the event loop; prompts counted exactly once a key of this engine
        has a tokens-per-minute limit in force (given, learned here or by another engine) or the batch a
        spend cap (estimates.py)."""
        estimates = self._estimates
        estimates.exact |= any(view.get("tpm") for view in self._watch.snapshots.values())
        watch = self._watch
        return await asyncio.to_thread(
            estimates.prepare, rows, self._routes.by_batch, lambda batch: watch.cap(batch) is not None
        )

    def _start(self, job: Job) -> asyncio.Task[Outcome | None]:
        row = job.row
        self.backlog.add(row.id, row.batch_id)
        self._watch.keys.add(job.key)
        self._held[row.id] = row
        if not self.paused_since(row.batch_id, self._claimed_at.get(row.batch_id, -math.inf)):
            self._watch.states[row.batch_id] = BatchState.IN_PROGRESS  # the claim found it so (e.g. resumed)
        task = asyncio.create_task(self._run_one(job))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def join(self) -> None:
        """Wait until every submitted row is finished and stored (or dropped)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._writer.join()

    def _task_done(self, task: asyncio.Task[Outcome | None]) -> None:
        self._tasks.discard(task)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("request task crashed", exc_info=task.exception())

    async def _run_one(self, job: Job) -> Outcome | None:
        try:
            outcome = await self._execute(job)
        except Exception as exc:  # a bug must not lose the row: it goes back to the queue
            log.exception("unexpected error on request %s", job.row.id)
            outcome = job.outcome(RequestStatus.QUEUED, [], ErrorType.INTERNAL, repr(exc))
        self.backlog.passed(job.row.id)
        if outcome is None:  # not ours any more: nothing of it is written
            self._stored([], [])
            self._drop(job.row)
            return None
        self._acct.count(outcome)
        self._writer.put(outcome)
        return outcome

    def _stored(self, stored: list[Outcome], dropped: list[Outcome]) -> None:
        """The writer is done with these (stored, or dropped since their rows were taken back)."""
        for outcome in stored:
            self._held.pop(outcome.request_id, None)
        for outcome in dropped:
            self._drop_id(outcome.request_id)
        asyncio.get_running_loop().create_task(self._notify_flushed())

    def _drop(self, row: Claimed) -> None:
        self._drop_id(row.id)

    def _drop_id(self, request_id: int) -> None:
        if self._held.pop(request_id, None) is not None:
            self.stats.lost += 1

    async def _notify_flushed(self) -> None:
        async with self._flushed:
            self._flushed.notify_all()

    async def _execute(self, job: Job) -> Outcome | None:
        row, began = job.row, time.monotonic()
        records: list[AttemptRecord] = []
        try:
            answer = await self._attempts(job, records)
        except _Stop as stop:
            if stop.status is None:
                return None
            return job.outcome(stop.status, records, stop.reason, stop.reason)
        except BatchBlocked as exc:  # nothing of the batch can succeed until someone acts
            await self._pause(row.batch_id, exc.message, began)
            return job.outcome(RequestStatus.QUEUED, records)
        except APIError as exc:
            result = result_row(exc.status, exc.request_id, None, exc.body, None) if exc.body else None
            return job.outcome(RequestStatus.FAILED, records, exc.error_type, exc.message, result)
        result = result_row(answer.status, None, answer.headers, answer.raw, answer.parsed)
        result["model"] = result["model"] or job.key.model  # audio answers do not name their model
        self._estimates.learn(job.key.model, result)
        return job.outcome(RequestStatus.SUCCEEDED, records, result=result)

    async def _attempts(self, job: Job, records: list[AttemptRecord]) -> _Answer:
        """The first attempt, then tenacity's; again on another account each time one is benched."""
        while True:
            try:
                try:
                    return await self._attempt(job, records)
                except RetryableError as first:
                    return await self._retry(job, records, first)
            except Rerouted:
                continue

    async def _retry(self, job: Job, records: list[AttemptRecord], first: RetryableError) -> _Answer:
        """Attempts 2..max_attempts, owned by tenacity. The first attempt goes out without it: building a
        retry loop for every request costs more than the HTTP call itself on a fast server."""
        if self.settings.max_attempts < 2:
            raise first
        await self._sleep(backoff_delay(1, first.retry_after))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.settings.max_attempts - 1),
            wait=wait_after_first,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(job, records)
        raise AssertionError("tenacity ended without a result or an error")

    async def _attempt(self, job: Job, records: list[AttemptRecord]) -> _Answer:
        row, route, estimate = job.row, job.route, job.estimate
        weight = self._watch.priority(row.batch_id)  # the batch's share of the slots and of the key
        async with self._slots.take(row.batch_id, weight):  # max in flight; checks right before sending
            self._check_stop(row)
            if not self._health.writable:  # answers could not be stored now: send nothing new
                await self._health.wait_writable(self._stop)
                self._check_stop(row)
            waited = time.perf_counter()
            target = await route.acquire(job.targets, estimate, row.batch_id, weight)  # account and budget
            waited = time.perf_counter() - waited
            lane, key = route.lanes[target.index], target.key
            self.backlog.passed(row.id)
            charged: int | None = 0  # what settles the reservation if nothing else does (refunds it)
            headers: Mapping[str, str] = {}
            ticket: Ticket | None = None
            status, used, sent, latency = None, Usage(), False, 0.0
            error: APIError | None = None
            try:
                self._check_stop(row)  # the wait for budget may have outlasted the batch (paused, cancelled)
                ticket = await self._acct.reserve(job, self._watch.cap(row.batch_id))
                await self._check_owned(row)
                started, t0 = utcnow(), time.perf_counter()
                with self._acct.on_wire(row.batch_id):
                    exchange = await self._http.post(row, job.endpoint, target, lane)
                status, headers, raw, error = exchange.status, exchange.headers, exchange.raw, exchange.error
                latency, sent = (time.perf_counter() - t0) * 1000.0, True
                parsed, error = answer_of(job.endpoint, job.plain_text, status, headers, raw, error)
                used = usage(parsed, raw)
                charged = charged_tokens(job, status, used.prompt_tokens, used.total_tokens)
            finally:
                self.limiter.settle(key, estimate, charged, headers)
                lane.learn(headers)
                self._estimates.exact |= "x-ratelimit-limit-tokens" in headers
                lane.gate.leave(
                    latency / 1000.0 if sent and error is None else None, overloaded(status, error)
                )
                if ticket is not None:
                    self._acct.settle(ticket, target.model, sent, status, used)
        self._acct.observe_latency(latency, waited)
        records.append(attempt_record(len(records) + 1, started, latency, status, error, headers, used))
        if isinstance(error, RateLimited):
            self.limiter.cooldown(key, error.retry_after or 1.0)
        if lane.breaker.observe(row.id, len(records), status, error):
            why = lane.breaker.describe(lane.account.azure_endpoint or lane.account.base_url)
            error = EndpointDown(why, status=status, error_type=ErrorType.ENDPOINT_DOWN)
        if error is not None:
            if isinstance(error, ACCOUNT_ERRORS) and route.pooled:
                await bench_account(self.db, route, target.index, row.batch_id, error)
            raise error
        assert status is not None and parsed is not None
        return _Answer(status, headers, raw, parsed)

    async def _check_owned(self, row: Claimed) -> None:
        """Send only while this engine provably holds the row (its heartbeat is recent, its claim current)."""
        if not self._own.fresh and not await self._own.confirm(self._stop):
            raise _Stop(RequestStatus.QUEUED, None)  # draining while the database cannot confirm
        if not self._own.holds(row):
            raise _Stop(None, "lost")

    def _check_stop(self, row: Claimed) -> None:
        state = self._watch.state(row.batch_id)
        if state in CANCELLED_STATES:
            raise _Stop(RequestStatus.CANCELLED, ErrorType.CANCELLED)
        if state == BatchState.PAUSED or self.draining:
            raise _Stop(RequestStatus.QUEUED, None)

    async def _sleep(self, seconds: float) -> None:
        """Backoff sleep that a drain cuts short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def paused_since(self, batch_id: str, since: float) -> bool:
        """Has this engine paused the batch at or after `since` (time.monotonic())?"""
        return self._paused_at.get(batch_id, -math.inf) >= since

    async def _pause(self, batch_id: str, reason: str, began: float) -> None:
        """Pause the batch for the answer of a request that began at `began`. One that began before this
        engine last paused the batch says nothing of a resume since (a wrong key's 401 arriving after
        `resume` set the right key): it pauses nothing again."""
        if self.paused_since(batch_id, began):
            self._watch.states[batch_id] = BatchState.PAUSED  # not sent here until a claim or the watch says
            return
        self._paused_at[batch_id] = time.monotonic()
        if self._watch.state(batch_id) != BatchState.PAUSED:
            self._watch.states[batch_id] = BatchState.PAUSED
            log.warning("batch %s paused: %s", batch_id, reason)
            await pause_batches(self.db, {batch_id}, reason)
