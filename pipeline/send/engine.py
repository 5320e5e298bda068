"""The engine: sends claimed requests with hundreds in flight on one event loop and one pooled HTTP session.

The same engine serves `pipeline run` (in-process) and the Celery workers. Around every attempt, in order:
take a slot (max in flight) -> check the batch still runs -> limiter.acquire -> HTTP (transport.py) ->
classify -> limiter.settle -> record the attempt. tenacity owns retries (RetryableError only,
`backoff_delay` waits). Outcomes go to the writer (writer.py), which stores them in batched transactions;
a keeper renews the leases of held rows, and a watcher notices batches paused or cancelled by others.
The caller chooses the limiter (`pipeline.ratelimit.make_limiter`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from pipeline.endpoints import AUDIO_URLS
from pipeline.errors import APIError, ErrorType, QuotaExhausted, RateLimited, RetryableError
from pipeline.ids import new_worker_id
from pipeline.ratelimit import Limiter
from pipeline.ratelimit.rules import LimitKey
from pipeline.send.classify import backoff_delay, classify
from pipeline.send.responses import Parsed, parse_success, usage_of
from pipeline.send.tokens import completion_budget, estimate_many
from pipeline.send.transport import Transport
from pipeline.send.writer import Writer, report_death
from pipeline.settings import Settings
from pipeline.store import batches, blobs, claims, limit_states
from pipeline.store.claims import AttemptRecord, Claimed, Outcome
from pipeline.store.db import Database
from pipeline.store.models import BatchState, RequestStatus, utcnow

log = logging.getLogger(__name__)

#: Seconds between checks of the batches' state (paused or cancelled elsewhere).
STATE_POLL_SECONDS = 1.0
#: State polls between two saves of the limiter's view (limits in force, send rate) for `status`.
LIMITS_SAVE_POLLS = 5


@dataclass
class EngineStats:
    """Counters for progress displays; only the engine's own event loop writes them."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    attempts: int = 0
    rate_limited: int = 0
    total_tokens: int = 0


class _Slots:
    """A FIFO counting semaphore whose acquire and release are O(1).

    asyncio.Semaphore scans all its waiters on every acquire; with thousands of claimed rows waiting for one
    of max-in-flight slots that scan dominated the event loop.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releaser hands its slot over: _free is not incremented in between
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


@dataclass(frozen=True, slots=True)
class _Answer:
    """A 2xx answer: what `_attempt` hands back on success."""

    status: int
    headers: Mapping[str, str]
    raw: bytes
    parsed: Parsed


@dataclass(frozen=True, slots=True)
class _Job:
    """A claimed row ready to send: whose budget it spends and how many tokens to reserve."""

    row: Claimed
    key: LimitKey
    estimate: int
    #: max_tokens x n when the body sets max_tokens: what the API charges against the TPM limit
    completion_cap: int | None


class _Stop(Exception):
    """The row must not be sent now: its batch was cancelled or paused, or the engine drains."""

    def __init__(self, status: RequestStatus, reason: str | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Engine:
    """Use as `async with Engine(...) as engine: await engine.submit(rows); await engine.join()`."""

    def __init__(
        self, settings: Settings, db: Database, limiter: Limiter, *, worker: str | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.limiter = limiter
        self._keys: set[LimitKey] = set()
        #: model -> moving average of completion tokens per choice, for estimates without max_tokens
        self._completion_avg: dict[str, float] = {}
        self.worker = worker or new_worker_id()
        self.stats = EngineStats()
        self.draining = False
        self._key = settings.require_api_key()
        self._held: dict[int, Claimed] = {}
        self._states: dict[str, BatchState] = {}
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._flushed = asyncio.Condition()
        self._room = asyncio.Event()
        self._slots = _Slots(settings.max_in_flight)
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._http = Transport(settings, self._key, functools.partial(blobs.load_blob, db))
        self._writer = Writer(db, self.worker, self._stored)

    def __repr__(self) -> str:
        return f"Engine(worker={self.worker!r}, base_url={self.settings.base_url!r})"

    async def __aenter__(self) -> Engine:
        await self._http.__aenter__()
        await self._writer.__aenter__()
        self._background = [
            asyncio.create_task(self._keep_leases()),
            asyncio.create_task(self._watch_states()),
        ]
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
            await self._save_limits()
            await self._http.__aexit__(None, None, None)
            closer = getattr(self.limiter, "aclose", None)
            if closer is not None:
                await closer()

    @property
    def in_flight(self) -> int:
        """Requests on the wire now."""
        return self._http.in_flight

    def drain(self) -> None:
        """Send nothing new: in-flight requests finish and are stored, the rest go back to the queue."""
        self.draining = True
        self._stop.set()

    async def submit(self, rows: list[Claimed]) -> None:
        """Start working on claimed rows; waits while twice max-in-flight rows are already held."""
        for job in await asyncio.to_thread(self._prepare, rows):
            self._start(job)
        while len(self._tasks) >= 2 * self.settings.max_in_flight:
            self._room.clear()
            await self._room.wait()

    async def process(self, rows: list[Claimed]) -> list[Outcome]:
        """Work on claimed rows and return once every one is stored (a worker's chunk)."""
        jobs = await asyncio.to_thread(self._prepare, rows)
        outcomes = await asyncio.gather(*(self._start(job) for job in jobs))
        async with self._flushed:
            await self._flushed.wait_for(lambda: not any(row.id in self._held for row in rows))
        return list(outcomes)

    def _prepare(self, rows: list[Claimed]) -> list[_Job]:
        """Parse the bodies and estimate their tokens, all at once and off the event loop."""
        bodies: list[dict[str, Any]] = [orjson.loads(row.body) for row in rows]
        # Audio reserves no tokens: whisper-1 is limited by requests alone, and token-billed transcription
        # models are charged their real usage when the answer settles.
        chat = [i for i, row in enumerate(rows) if row.url not in AUDIO_URLS]
        estimates = [0] * len(rows)
        for i, n in zip(chat, estimate_many([bodies[i] for i in chat], self._completion_avg), strict=True):
            estimates[i] = n
        fingerprint, org = self._key.fingerprint(), self.settings.organization
        return [
            _Job(
                row,
                LimitKey(self.settings.base_url, fingerprint, org, str(body.get("model"))),
                estimate,
                completion_budget(body) if row.url not in AUDIO_URLS else None,
            )
            for row, body, estimate in zip(rows, bodies, estimates, strict=True)
        ]

    def _start(self, job: _Job) -> asyncio.Task[Outcome]:
        row = job.row
        self._keys.add(job.key)
        self._held[row.id] = row
        self._states[row.batch_id] = BatchState.ACTIVE  # the claim just found it active (e.g. resumed)
        task = asyncio.create_task(self._run_one(job))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def join(self) -> None:
        """Wait until every submitted row is finished and stored."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._writer.join()

    def _task_done(self, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("request task crashed", exc_info=task.exception())

    async def _run_one(self, job: _Job) -> Outcome:
        try:
            outcome = await self._execute(job)
        except Exception as exc:  # a bug must not lose the row: it goes back to the queue
            log.exception("unexpected error on request %s", job.row.id)
            outcome = Outcome(
                job.row.id, RequestStatus.QUEUED, error_type=ErrorType.INTERNAL, error_message=repr(exc)
            )
        self._count(outcome)
        self._writer.put(outcome)
        return outcome

    def _stored(self, outcomes: list[Outcome]) -> None:
        """The writer stored these: let go of their rows and wake whoever waits for a chunk."""
        for outcome in outcomes:
            self._held.pop(outcome.request_id, None)
        asyncio.get_running_loop().create_task(self._notify_flushed())

    async def _notify_flushed(self) -> None:
        async with self._flushed:
            self._flushed.notify_all()

    async def _execute(self, job: _Job) -> Outcome:
        row = job.row
        records: list[AttemptRecord] = []
        try:
            try:
                answer = await self._attempt(job, records)
            except RetryableError as first:
                answer = await self._retry(job, records, first)
        except _Stop as stop:
            return Outcome(row.id, stop.status, records, error_type=stop.reason, error_message=stop.reason)
        except QuotaExhausted as exc:
            await self._pause(row.batch_id, exc.message)
            return Outcome(row.id, RequestStatus.QUEUED, records)
        except APIError as exc:
            result = (
                _result_row(exc.status, exc.request_id, None, exc.body, None)
                if exc.body is not None
                else None
            )
            return Outcome(row.id, RequestStatus.FAILED, records, result, exc.error_type, exc.message)
        result = _result_row(answer.status, None, answer.headers, answer.raw, answer.parsed)
        result["model"] = result["model"] or job.key.model  # audio answers do not name their model
        self._learn_completion(job.key.model, result)
        return Outcome(row.id, RequestStatus.SUCCEEDED, records, result)

    async def _retry(self, job: _Job, records: list[AttemptRecord], first: RetryableError) -> _Answer:
        """Attempts 2..max_attempts, owned by tenacity. The first attempt goes out without it: building a
        retry loop for every request costs more than the HTTP call itself on a fast server."""
        if self.settings.max_attempts < 2:
            raise first
        await self._sleep(backoff_delay(1, first.retry_after))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.settings.max_attempts - 1),
            wait=_wait_after_first,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(job, records)
        raise AssertionError("tenacity ended without a result or an error")

    async def _attempt(self, job: _Job, records: list[AttemptRecord]) -> _Answer:
        row, key, estimate = job.row, job.key, job.estimate
        async with self._slots:  # max in flight: the stop checks below happen right before sending
            self._check_stop(row)
            await self.limiter.acquire(key, estimate)
            try:
                self._check_stop(row)  # the wait for budget may have outlasted the batch (paused, cancelled)
            except _Stop:
                self.limiter.settle(key, estimate, 0, {})
                raise
            started, t0 = utcnow(), time.perf_counter()
            exchange = await self._http.post(row)
        status, headers, raw, error = exchange.status, exchange.headers, exchange.raw, exchange.error
        latency = (time.perf_counter() - t0) * 1000.0
        parsed = None
        if status is not None and 200 <= status < 300:
            parsed = parse_success(raw, headers.get("Content-Type"))  # parsed once: usage and result
            prompt, completion, total = parsed.prompt_tokens, parsed.completion_tokens, parsed.total_tokens
        else:
            prompt, completion, total = usage_of(raw) if raw else (None, None, None)
        self.limiter.settle(key, estimate, _charged(job, status, prompt, total), headers)
        error = error or classify(status or 0, headers, raw)
        records.append(
            AttemptRecord(
                len(records) + 1,
                started,
                latency,
                status,
                error.error_type if error else None,
                error.message if error else None,
                headers.get("x-request-id"),
                prompt,
                completion,
                total,
            )
        )
        self.stats.attempts += 1
        self.stats.total_tokens += total or 0
        if isinstance(error, RateLimited):
            self.stats.rate_limited += 1
            self.limiter.cooldown(key, error.retry_after or 1.0)
        if error is not None:
            raise error
        assert status is not None and parsed is not None
        return _Answer(status, headers, raw, parsed)

    def _learn_completion(self, model: str, result: dict[str, Any]) -> None:
        """Average real completion length per choice, reserved for later requests that set no max_tokens."""
        tokens, reasons = result.get("completion_tokens"), result.get("finish_reasons")
        if not isinstance(tokens, int) or not reasons:
            return
        per_choice = tokens / (reasons.count("|") + 1)
        previous = self._completion_avg.get(model)
        self._completion_avg[model] = (
            per_choice if previous is None else previous + 0.05 * (per_choice - previous)
        )

    def _check_stop(self, row: Claimed) -> None:
        state = self._states.get(row.batch_id, BatchState.ACTIVE)
        if state == BatchState.CANCELLED:
            raise _Stop(RequestStatus.CANCELLED, ErrorType.CANCELLED)
        if state == BatchState.PAUSED or self.draining:
            raise _Stop(RequestStatus.QUEUED, None)

    async def _sleep(self, seconds: float) -> None:
        """Backoff sleep that a drain cuts short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _pause(self, batch_id: str, reason: str) -> None:
        if self._states.get(batch_id) != BatchState.PAUSED:
            self._states[batch_id] = BatchState.PAUSED
            log.warning("batch %s paused: %s", batch_id, reason)
            await asyncio.to_thread(batches.set_batch_state, self.db, batch_id, BatchState.PAUSED, reason)

    def _count(self, outcome: Outcome) -> None:
        name = {
            RequestStatus.SUCCEEDED: "succeeded",
            RequestStatus.FAILED: "failed",
            RequestStatus.CANCELLED: "cancelled",
        }.get(outcome.status, "released")
        setattr(self.stats, name, getattr(self.stats, name) + 1)

    async def _keep_leases(self) -> None:
        period = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            if self._held:
                with contextlib.suppress(Exception):  # the database is busy or restarting: next period
                    await asyncio.to_thread(
                        claims.renew_leases,
                        self.db,
                        self.worker,
                        list(self._held),
                        self.settings.lease_seconds,
                    )

    async def _save_limits(self) -> None:
        """Save what the limiter says of every key this engine used, for `pipeline status`."""
        snapshot = getattr(self.limiter, "snapshot", None)
        if snapshot is None or not self._keys:
            return
        snapshots = []
        for key in list(self._keys):
            snap = snapshot(key)
            snapshots.append((key, await snap if inspect.isawaitable(snap) else snap))
        await asyncio.to_thread(limit_states.save_limit_states, self.db, snapshots)

    async def _watch_states(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(STATE_POLL_SECONDS)
            polls += 1
            if polls % LIMITS_SAVE_POLLS == 0:
                try:
                    await self._save_limits()
                except Exception:  # a display aid: never worth stopping the engine
                    log.warning("could not save limiter state", exc_info=True)
            batch_ids = {row.batch_id for row in self._held.values()}
            if batch_ids:
                with contextlib.suppress(Exception):  # the database is busy or restarting: next period
                    self._states.update(await asyncio.to_thread(batches.batch_states, self.db, batch_ids))


def _charged(job: _Job, status: int | None, prompt: int | None, total: int | None) -> int | None:
    """Tokens the API counted against the TPM limit for this attempt.

    It counts prompt + max_tokens x n when the request arrives (not the shorter real answer), so that is what
    the limiter is settled with; a 429 was refused before counting; None (no usage) keeps the reservation.
    """
    if status == 429:
        return 0
    if job.completion_cap is not None and prompt is not None:
        return prompt + job.completion_cap
    return total


def _wait_after_first(state: RetryCallState) -> float:
    """tenacity's wait; its attempt 1 is the request's second, so the backoff is one step further."""
    exc = state.outcome.exception() if state.outcome else None
    server_wait = exc.retry_after if isinstance(exc, APIError) else None
    return backoff_delay(state.attempt_number + 1, server_wait)


def _result_row(
    status: int | None,
    request_id: str | None,
    headers: Mapping[str, str] | None,
    raw: bytes,
    parsed: Parsed | None,
) -> dict[str, Any]:
    content_type = headers.get("Content-Type") if headers is not None else None
    return {
        "http_status": status or 0,
        "x_request_id": request_id or (headers.get("x-request-id") if headers is not None else None),
        "content_type": content_type or "application/json",
        "body": raw.decode("utf-8", "replace"),
        "response_id": parsed.response_id if parsed else None,
        "model": parsed.model if parsed else None,
        "finish_reasons": parsed.finish_reasons if parsed else None,
        "output": parsed.output if parsed else None,
        "prompt_tokens": parsed.prompt_tokens if parsed else None,
        "completion_tokens": parsed.completion_tokens if parsed else None,
        "total_tokens": parsed.total_tokens if parsed else None,
        "audio_seconds": parsed.audio_seconds if parsed else None,
    }
