"""A part's life, one recorded step at a time: upload, create, poll, store the answers.

    planned -> uploading -> uploaded -> creating -> submitted -> done
                  |                        |            |
       look up the file by name   look up the batch    failed: try again later (token limit, ...) from
       before uploading           by metadata before   `uploaded` with a new try, or reject its lines
                                  creating

Each step is recorded before the remote call it makes (`uploading`, `creating` with its try number) and
after (`input_file_id`, `remote_batch_id`), so a process killed anywhere is followed by one that first
looks for what the dead one may have made: the file by its name (`pipeline-<batch>-<part>.jsonl`), the
batch by its metadata (our batch id, part id and try). Nothing is uploaded or created twice.

A part is advanced only by the engine holding it (`store/parts.take`), and a remote call that makes
something goes out only while that engine's heartbeat is fresh (as the engine sends a request): an engine
the others may have buried makes nothing. Polls back off from 1 s to `batch_poll_seconds`, resetting when
the remote status changes. A cancelled batch's parts are cancelled remotely (or never created).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.batchapi import ingest
from pipeline.batchapi.client import BatchClient
from pipeline.batchapi.ingest import Tally, Window
from pipeline.batchapi.options import BatchApiOptions
from pipeline.batchapi.plan import input_filename, write_input
from pipeline.errors import ConfigError, PermanentError, RetryableError
from pipeline.send.ownership import Ownership
from pipeline.settings import Settings
from pipeline.store import batches, parts
from pipeline.store.claims import WorkerGone
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, Part, PartState, utcnow

log = logging.getLogger(__name__)

#: Remote statuses a batch never leaves.
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Error codes of a failed batch that mean "not now": the part is created again later.
RETRY_LATER = frozenset({"token_limit_exceeded", "rate_limit_exceeded", "server_error"})
#: The key fingerprint of a batch submitted without a key (any worker's key is then the one to use).
NO_KEY = "nokey"
#: Refusals that are about the account or the key, not the part: they stop the run (a worker logs them).
ACCOUNT_STATUSES = frozenset({401, 403})
#: Seconds before the first poll of a new batch.
FIRST_POLL = 1.0

T = TypeVar("T")
OnChange = Callable[[Part], None]
OnDirect = Callable[[str, list[int]], Awaitable[None]]


class _Wait(Exception):
    """The step cannot go on now: a call failed in a way a later try may cure."""


@dataclass(frozen=True)
class _Job:
    """What every step of one advance needs."""

    batch: Batch
    client: BatchClient
    worker: str
    options: BatchApiOptions

    @property
    def cancelled(self) -> bool:
        return self.batch.state == BatchState.CANCELLED


class PartDriver:
    """`async with PartDriver(settings, db, ownership) as driver: await driver.advance(part_id)`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        own: Ownership,
        *,
        on_change: OnChange | None = None,
        on_direct: OnDirect | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self._own = own
        self._on_change = on_change
        self._on_direct = on_direct
        self._key = settings.require_api_key()
        self._clients: dict[tuple[str, str | None], BatchClient] = {}
        self._stop = asyncio.Event()

    async def __aenter__(self) -> PartDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self._clients.values():
            await client.__aexit__(None, None, None)

    def stop(self) -> None:
        """Make nothing new: the step under way ends at its next check."""
        self._stop.set()

    async def advance(self, part_id: str) -> None:
        """Take the part if nobody holds it, carry it as far as it goes now, and let it go."""
        worker = self._own.worker
        try:
            part = await asyncio.to_thread(parts.take, self.db, part_id, worker)
        except WorkerGone:
            await self._own.beat()  # registers anew
            return
        if part is None:
            return
        try:
            batch = await asyncio.to_thread(batches.get_batch, self.db, part.batch_id)
            job = _Job(batch, await self._client(batch), worker, BatchApiOptions.of(batch.options))
            await self._run(job, part)
        finally:
            with contextlib.suppress(Exception):  # else it is freed when this engine retires or is buried
                await asyncio.to_thread(parts.release, self.db, part_id, worker)

    async def _run(self, job: _Job, part: Part) -> None:
        steps: dict[PartState, Callable[[_Job, Part], Awaitable[Part | None]]] = {
            PartState.PLANNED: self._planned,
            PartState.UPLOADING: self._uploading,
            PartState.UPLOADED: self._uploaded,
            PartState.CREATING: self._creating,
            PartState.SUBMITTED: self._submitted,
        }
        current = part
        while current.state.open and not self._stop.is_set():
            try:
                moved = await steps[current.state](job, current)
            except _Wait:
                return
            except RetryableError as exc:  # a download that kept failing: storing is idempotent, try later
                log.warning("part %s: %s; trying again later", current.id, exc.message)
                await self._save(job, current, next_in=self._interval(current.polls + 1))
                return
            if moved is None:  # lost, or not to go on now
                return
            self._changed(current, moved)
            if moved.state is current.state:  # polled: wait for the next poll
                return
            current = moved

    # --- steps -----------------------------------------------------------------------------------------

    async def _planned(self, job: _Job, part: Part) -> Part | None:
        if job.cancelled:
            return await self._give_up(job, part)
        return await self._save(job, part, state=PartState.UPLOADING)

    async def _uploading(self, job: _Job, part: Part) -> Part | None:
        name = input_filename(part)
        found = await self._calling(job, part, job.client.find_file(name))
        if found is None and job.cancelled:
            return await self._give_up(job, part)
        if found is None:
            if not await self._may_make(job):
                return None
            try:
                found = await self._calling(job, part, self._upload(job, part, name))
            except PermanentError as refused:
                return await self._refused(job, part, refused)
        return await self._save(
            job, part, state=PartState.UPLOADED, input_file_id=str(found.get("id")), bytes=found.get("bytes")
        )

    async def _upload(self, job: _Job, part: Part, name: str) -> dict[str, Any]:
        with tempfile.TemporaryFile() as fh:
            await asyncio.to_thread(write_input, self.db, part, fh)
            fh.seek(0)
            return await job.client.upload(name, fh)

    async def _uploaded(self, job: _Job, part: Part) -> Part | None:
        if job.cancelled:
            return await self._give_up(job, part)
        return await self._save(job, part, state=PartState.CREATING, tries=part.tries + 1)

    async def _creating(self, job: _Job, part: Part) -> Part | None:
        metadata = {
            "pipeline_batch": part.batch_id,
            "pipeline_part": part.id,
            "pipeline_try": str(part.tries),
        }
        found = await self._calling(job, part, job.client.find_batch(metadata))
        if found is None and job.cancelled:
            return await self._give_up(job, part)
        if found is None:
            if not await self._may_make(job):
                return None
            try:
                found = await self._calling(
                    job, part, job.client.create(str(part.input_file_id), part.endpoint, metadata)
                )
            except PermanentError as refused:
                return await self._refused(job, part, refused)
        return await self._save(
            job,
            part,
            state=PartState.SUBMITTED,
            remote_batch_id=str(found.get("id")),
            next_in=FIRST_POLL,
            polls=0,
            **_remote_fields(found),
        )

    async def _submitted(self, job: _Job, part: Part) -> Part | None:
        remote_id = str(part.remote_batch_id)
        remote = await self._calling(job, part, job.client.retrieve(remote_id))
        if job.cancelled and remote.get("status") in ("validating", "in_progress"):
            remote = await self._calling(job, part, job.client.cancel(remote_id))
        polls = 0 if remote.get("status") != part.remote_status else part.polls + 1
        saved = await self._save(
            job, part, polls=polls, next_in=self._interval(polls), **_remote_fields(remote)
        )
        if saved is None or remote.get("status") not in FINAL:
            return saved
        if remote.get("status") == "failed":
            return await self._failed(job, saved, remote)
        tally = await ingest.store_answers(
            job.client,
            self.db,
            saved,
            remote,
            on_expire=job.options.on_expire,
            max_attempts=_max_attempts(job.batch),
            cancelled=job.cancelled,
        )
        return await self._finish(job, saved, tally)

    # --- endings ---------------------------------------------------------------------------------------

    async def _failed(self, job: _Job, part: Part, remote: Mapping[str, Any]) -> Part | None:
        """The API turned the part away: try again later, or store why for good."""
        errors = _errors(remote)
        later = any(e.get("code") in RETRY_LATER for e in errors)
        if later and part.tries < _max_attempts(job.batch) and not job.cancelled:
            log.warning("part %s turned away (%s); trying again later", part.id, _first_message(errors))
            waiting = await self._save(
                job,
                part,
                state=PartState.UPLOADED,
                remote_batch_id=None,
                errors=errors,
                next_in=self.settings.batch_poll_seconds,
            )
            if waiting is not None:
                self._changed(part, waiting)
            return None  # not before its next_at
        return await self._reject(job, part, errors, Window.of(remote))

    async def _refused(self, job: _Job, part: Part, refused: PermanentError) -> Part | None:
        """The API refused to take the part's file or make its batch: for this part's sake (too large, a
        bad file), its lines fail with the API's error; for everyone's (a bad key), the error stands."""
        if refused.status in ACCOUNT_STATUSES:
            raise refused
        errors = [{"code": refused.error_type, "message": refused.message, "line": None}]
        return await self._reject(job, part, errors, Window.of({}))

    async def _reject(
        self, job: _Job, part: Part, errors: list[dict[str, Any]], window: Window
    ) -> Part | None:
        log.warning("part %s rejected by the Batch API: %s", part.id, _first_message(errors))
        tally = await ingest.store_rejection(self.db, part, errors, window)
        return await self._finish(job, part, tally, errors=errors)

    async def _give_up(self, job: _Job, part: Part) -> Part | None:
        """Its batch was cancelled before anything was made remotely: its rows are cancelled."""
        tally = await ingest.store_answers(
            job.client,
            self.db,
            part,
            {"status": "cancelled"},
            on_expire=job.options.on_expire,
            max_attempts=1,
            cancelled=True,
        )
        return await self._finish(job, part, tally)

    async def _finish(self, job: _Job, part: Part, tally: Tally, **values: Any) -> Part | None:
        """Done, once it holds no row any more; else (an answer that could not be stored) later again."""
        if tally.direct and self._on_direct is not None:
            await self._on_direct(part.batch_id, tally.direct)
        if tally.lost:
            log.warning("part %s: %d answers not stored", part.id, tally.lost)
        if await asyncio.to_thread(_holds_rows, self.db, part):
            await self._save(job, part, next_in=self.settings.batch_poll_seconds, **values)
            return None
        return await self._save(job, part, state=PartState.DONE, finished_at=utcnow(), next_at=None, **values)

    # --- helpers ---------------------------------------------------------------------------------------

    async def _save(self, job: _Job, part: Part, **values: Any) -> Part | None:
        saved = await asyncio.to_thread(parts.save, self.db, part.id, job.worker, **values)
        if saved is None:
            log.warning("part %s was taken over by another engine; leaving it", part.id)
        return saved

    async def _calling(self, job: _Job, part: Part, call: Awaitable[T]) -> T:
        """`call`'s answer; when it failed in a way another try may cure, the part waits (_Wait)."""
        try:
            return await call
        except RetryableError as exc:
            log.warning("part %s: %s; trying again later", part.id, exc.message)
            await self._save(job, part, next_in=self._interval(part.polls + 1))
            raise _Wait from None

    def _changed(self, before: Part, after: Part) -> None:
        moved = (before.state, before.remote_status) != (after.state, after.remote_status)
        if moved and self._on_change is not None:
            self._on_change(after)

    async def _may_make(self, job: _Job) -> bool:
        """Whether this engine may make something remote now: it still holds the part and provably lives."""
        if self._own.worker != job.worker:
            return False
        if not self._own.fresh and not await self._own.confirm(self._stop):
            return False
        return self._own.worker == job.worker

    def _interval(self, polls: int) -> float:
        return min(self.settings.batch_poll_seconds, FIRST_POLL * 2.0 ** min(polls, 16))

    async def _client(self, batch: Batch) -> BatchClient:
        """The client for the API and account the batch was stored for (its base URL, its key)."""
        stored = batch.key_fingerprint
        if stored != NO_KEY and stored != self.settings.key_fingerprint():
            raise ConfigError(
                f"batch {batch.id} was sent with another API key: its Batch API parts can be reached only "
                "with that key"
            )
        key = (batch.base_url, batch.organization)
        if key not in self._clients:
            self._clients[key] = await BatchClient(
                self.settings, self._key, batch.base_url, batch.organization
            ).__aenter__()
        return self._clients[key]


def _holds_rows(db: Database, part: Part) -> bool:
    return next(iter(parts.part_rows(db, part)), None) is not None


def _remote_fields(remote: Mapping[str, Any]) -> dict[str, Any]:
    """The part columns that mirror a remote batch object."""
    found = remote.get("request_counts")
    counts: Mapping[str, Any] = found if isinstance(found, dict) else {}
    return {
        "remote_status": remote.get("status"),
        "request_total": counts.get("total"),
        "request_completed": counts.get("completed"),
        "request_failed": counts.get("failed"),
        "output_file_id": remote.get("output_file_id"),
        "error_file_id": remote.get("error_file_id"),
    }


def _errors(remote: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors = remote.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    return [e for e in data or [] if isinstance(e, dict)]


def _first_message(errors: list[dict[str, Any]]) -> str:
    return str(errors[0].get("message") or errors[0].get("code")) if errors else "no reason given"


def _max_attempts(batch: Batch) -> int:
    value = batch.options.get("max_attempts")
    return value if isinstance(value, int) and value > 0 else 10
