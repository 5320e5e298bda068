"""Claims: which engine holds which rows, proven by heartbeats and fences, and storing what became of them.

Ownership is checked, never assumed:

- Every engine registers a row in `workers` and bumps its `beat` while it lives (`beat`). Others watch the
  beats (recovery.py): an engine whose beat did not move for a whole lease, timed on the watcher's own
  monotonic clock, is dead, and its running rows go back to the queue in the transaction that deletes its
  worker row. No process's wall clock is ever compared with another's.
- A claim takes only queued rows of active batches and bumps each row's `fence`. The holder keeps
  (id, fence) and writes attempts, result and status only where the row is still `running` with that
  fence (`record`), so an engine that lost rows (declared dead, then back) writes nothing for them.
- A claim by an engine whose worker row is gone fails (`WorkerGone`): rows are never taken in the name of
  an engine the others already buried.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.orm import Session

from pipeline.errors import ErrorType, PipelineError
from pipeline.store import series, usage
from pipeline.store.db import Database
from pipeline.store.models import (
    CANCELLED_STATES,
    Attempt,
    Batch,
    BatchState,
    Part,
    Request,
    RequestStatus,
    Result,
    Via,
    Worker,
    utcnow,
)
from pipeline.store.outcomes import AttemptRecord as AttemptRecord
from pipeline.store.outcomes import Outcome as Outcome
from pipeline.store.settle import settle_states
from pipeline.store.sql import (
    columns,
    db_time_for,
    executemany,
    fetch,
    insert_sql,
    is_sqlite,
    parts,
    placeholders,
    upsert_sql,
    values_fitter,
)

log = logging.getLogger(__name__)


class WorkerGone(PipelineError):
    """This engine's worker row is gone: the others declared it dead and took its rows back."""


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class Claimed:
    """A request row an engine now holds, under the fence its claim set."""

    id: int
    batch_id: str
    custom_id: str
    url: str
    body: str
    attempts: int
    fence: int
    #: the stored audio file of a transcription or translation (see `blobs.load_blob`)
    blob_sha256: str | None = None
    #: the engine (worker id) that claimed it
    worker: str = ""


#: The attempts columns an AttemptRecord fills (with request_id).
ATTEMPT_COLUMNS = columns(Attempt, without=("id",))
_ATTEMPT_FIELDS = tuple(c for c in ATTEMPT_COLUMNS if c != "request_id")
RESULT_COLUMNS = columns(Result)
_RESULT_FIELDS = tuple(c for c in RESULT_COLUMNS if c != "request_id")
# The writer's rows are tuples in these columns' order, taken from the records with C-level getters: a dict
# per row cost more than the statements (bench/RESULTS.md, "Where the CPU goes").
_INSERT_ATTEMPT = insert_sql(Attempt, ("request_id", *_ATTEMPT_FIELDS), positional=True)
_UPSERT_RESULT = upsert_sql(Result, "request_id", ("request_id", *_RESULT_FIELDS), positional=True)
_FINISH_COLUMNS = ("status", "attempts", "error_type", "error_message", "finished_at", "id", "fence")
_FINISH_REQUEST = (
    "UPDATE requests SET status = ?, attempts = attempts + ?, error_type = ?, "
    "error_message = ?, finished_at = ? "
    "WHERE id = ? AND fence = ? AND status = 'running'"
)
_attempt_values = operator.attrgetter(*_ATTEMPT_FIELDS)
_result_values = operator.itemgetter(*_RESULT_FIELDS)
_STARTED_AT = _ATTEMPT_FIELDS.index("started_at")
_fit_attempt = values_fitter(Attempt, ("request_id", *_ATTEMPT_FIELDS))
_fit_result = values_fitter(Result, ("request_id", *_RESULT_FIELDS))
_fit_finish = values_fitter(Request, _FINISH_COLUMNS)


# --- workers -------------------------------------------------------------------------------------------


def register(db: Database, worker: str, host: str, pid: int, lease_seconds: float) -> None:
    """Add this engine's worker row (beat 0), with the lease its watchers must give it."""
    with db.write() as s:
        s.add(Worker(id=worker, host=host, pid=pid, beat=0, lease_seconds=lease_seconds, started_at=utcnow()))


def beat(db: Database, worker: str) -> bool:
    """Bump the worker's beat; False when its row is gone (declared dead: its rows are no longer its own)."""
    with db.write() as s:
        done = s.execute(update(Worker).where(Worker.id == worker).values(beat=Worker.beat + 1))
        return bool(getattr(done, "rowcount", 0))


def retire(db: Database, worker: str) -> int:
    """A clean exit: rows still running under the worker go back to the queue, and its row goes."""
    with db.write() as s:
        released = requeue_rows_of(s, worker)
        s.execute(delete(Worker).where(Worker.id == worker))
    settle_states(db, {batch_id for batch_id, _ in released})
    return len(released)


def save_flights(db: Database, worker: str, flights: dict[str, list[float]]) -> None:
    """What the engine has on the wire now, per batch: [requests, USD reserved for them]."""
    with db.write() as s:
        s.execute(update(Worker).where(Worker.id == worker).values(flights=flights or None))


def requeue_rows_of(s: Session, worker: str) -> list[tuple[str, int]]:
    """Every running row of `worker` back to queued (cancelled when its batch was), fences bumped; and
    every Batch API part it was advancing free for another engine to take."""
    s.execute(update(Part).where(Part.holder == worker).values(holder=None))
    rows = [
        (b, i)
        for b, i in s.execute(
            update(Request)
            .where(Request.worker == worker, Request.status == RequestStatus.RUNNING)
            .values(status=RequestStatus.QUEUED, worker=None, fence=Request.fence + 1, enqueued_at=None)
            .returning(Request.batch_id, Request.id)
        )
    ]
    if rows:  # a cancelled batch keeps no queued rows
        cancelled = select(Batch.id).where(Batch.state.in_(CANCELLED_STATES))
        s.execute(
            update(Request)
            .where(Request.status == RequestStatus.QUEUED, Request.batch_id.in_(cancelled))
            .values(
                status=RequestStatus.CANCELLED,
                error_type=ErrorType.CANCELLED,
                error_message="cancelled",
                finished_at=utcnow(),
            )
        )
    return rows


# --- claims --------------------------------------------------------------------------------------------


def sent_directly() -> ColumnElement[bool]:
    """Rows an engine may send: those of direct batches, and those of batch-api batches marked direct.

    The rows of a batch-api batch are otherwise the Batch API's: no stale message, re-publish or run of
    the engine may send them (and pay for them) a second way.
    """
    direct_batches = select(Batch.id).where(Batch.via == Via.DIRECT)
    return or_(Request.via == Via.DIRECT, Request.batch_id.in_(direct_batches))


#: What a claim returns of each row it took: a `Claimed`'s fields but the worker, in their order
#: (`claimed_row`).
CLAIMED_COLUMNS = (
    Request.id,
    Request.batch_id,
    Request.custom_id,
    Request.url,
    Request.body,
    Request.attempts,
    Request.fence,
    Request.blob_sha256,
)


def claimed_row(row: Sequence[Any], worker: str) -> Claimed:
    """The `Claimed` of a row of CLAIMED_COLUMNS, taken positionally (no dict per row: a hot path)."""
    request_id, batch_id, custom_id, url, body, attempts, fence, blob_sha256 = row
    return Claimed(request_id, batch_id, custom_id, url, body, attempts, fence, blob_sha256, worker)


def hold_worker(s: Session, worker: str) -> None:
    """Hold `worker`'s row for this transaction (FOR SHARE on PostgreSQL); WorkerGone when it is gone.

    The watcher that buries a worker locks that row FOR UPDATE, so burying and claiming never interleave.
    """
    if s.scalar(select(Worker.id).where(Worker.id == worker).with_for_update(read=True)) is None:
        raise WorkerGone(f"worker {worker} was declared dead")


def claim(db: Database, ids: Sequence[int], worker: str) -> list[Claimed]:
    """Take the queued rows among `ids` of batches in progress for `worker`; the others are skipped (and the
    rows of a batch-api batch, unless marked to be sent directly).

    Raises WorkerGone when the worker's row is gone (see `hold_worker`).
    """
    claimed: list[Claimed] = []
    active = select(Batch.id).where(Batch.state == BatchState.IN_PROGRESS)
    for part in parts(ids):
        stmt = (
            update(Request)
            .where(
                Request.id.in_(part),
                Request.status == RequestStatus.QUEUED,
                Request.batch_id.in_(active),
                sent_directly(),
            )
            .values(status=RequestStatus.RUNNING, worker=worker, fence=Request.fence + 1)
            .returning(*CLAIMED_COLUMNS)
        )
        with db.write() as s:
            hold_worker(s, worker)
            claimed.extend(claimed_row(row, worker) for row in s.execute(stmt))
    claimed.sort(key=lambda c: c.id)
    return claimed


def queued_ids(
    db: Database, batch_id: str, after: int, limit: int, *, direct_only: bool = False
) -> list[int]:
    """Ids of queued rows of the batch, in id order, after `after` (only those marked direct, if asked)."""
    stmt = (
        select(Request.id)
        .where(Request.batch_id == batch_id, Request.id > after, Request.status == RequestStatus.QUEUED)
        .order_by(Request.id)
        .limit(limit)
    )
    if direct_only:
        stmt = stmt.where(Request.via == Via.DIRECT)
    with db.read() as s:
        return list(s.scalars(stmt))


# --- outcomes ------------------------------------------------------------------------------------------


def record(db: Database, outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Store the outcomes whose rows are still held under their fence, in one transaction.

    Returns the outcomes NOT stored because their row was taken back (its holder lost it): their attempts,
    results and status are not written. Values are fitted to the columns first (lengths, NUL characters),
    so the same outcome stores alike on SQLite and PostgreSQL. The hottest write path: it goes straight
    to the driver's executemany.
    """
    if not outcomes:
        return []
    with db.write() as s:
        refused = record_in(s, outcomes, db.is_sqlite)
    settle_after(db, outcomes, refused)
    return refused


def record_in(s: Session, outcomes: Sequence[Outcome], sqlite: bool) -> list[Outcome]:
    """`record` in the caller's write transaction `s` (for a caller that changes more in the same one; it
    calls `settle_after` once that transaction committed)."""
    held = _held_fences(s, [o.request_id for o in outcomes])
    kept = [o for o in outcomes if held.get(o.request_id) == o.fence]
    _write(s, kept, sqlite)
    usage.add_usage(s, sqlite, _usage_of(kept))
    series.add_outcomes(s, sqlite, kept)
    usage.add_failures(
        s,
        [
            (o.batch_id, o.error_type, (o.result or {}).get("http_status"), o.error_message)
            for o in kept
            if o.status == RequestStatus.FAILED and o.batch_id
        ],
    )
    return [o for o in outcomes if held.get(o.request_id) != o.fence]


def settle_after(db: Database, outcomes: Sequence[Outcome], refused: Sequence[Outcome]) -> None:
    """After a transaction that stored outcomes committed: settle the state of the batches they touched."""
    gone = {id(o) for o in refused}
    touched = {o.batch_id for o in outcomes if o.batch_id and id(o) not in gone}
    if touched:
        try:
            settle_states(db, touched)
        except Exception as exc:  # stored all the same; the next write or recovery pass settles them
            log.warning("could not settle the state of batches %s (%r)", sorted(touched), exc)


def _usage_of(outcomes: Sequence[Outcome]) -> list[tuple[str, usage.Usage]]:
    """The counters the outcomes' attempts add, per (batch, model, tier)."""
    counters: dict[tuple[str, str, str], usage.Usage] = {}
    for o in outcomes:
        for a in o.attempts:
            tier = a.via or usage.DIRECT  # the Batch API's attempts are priced apart (half)
            key = (o.batch_id, o.model, tier)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = usage.Usage(o.model, tier)
            tokens = (
                a.prompt_tokens,
                a.cached_tokens,
                a.completion_tokens,
                a.total_tokens,
                a.reasoning_tokens,
            )
            counter.add_attempt(a.started_at, a.http_status, tokens, a.audio_seconds)
    return [(batch_id, counter) for (batch_id, _, _), counter in counters.items()]


def _held_fences(s: Session, ids: Sequence[int]) -> dict[int, int]:
    """Fences of the running rows among `ids`, locked (PostgreSQL) until the transaction ends."""
    sqlite = is_sqlite(s)
    fences: dict[int, int] = {}
    for part in parts(sorted(ids)):
        fences.update(fetch(s, _fences_sql(len(part), sqlite), part))
    return fences


@functools.lru_cache(maxsize=64)
def _fences_sql(n: int, sqlite: bool) -> str:
    """The writer's fence check for `n` ids, once per transaction. On SQLite `+status` keeps the planner on
    the primary key: it would otherwise read every running row (every engine's) through the status index
    to find these few."""
    status = "+status" if sqlite else "status"
    ids = placeholders(n)
    sql = f"SELECT id, fence FROM requests WHERE id IN ({ids}) AND {status} = 'running' ORDER BY id"
    return sql if sqlite else sql + " FOR UPDATE"


def _write(s: Session, outcomes: Sequence[Outcome], sqlite: bool) -> None:
    now = db_time_for(sqlite, utcnow())
    attempts = [_attempt_row(o.request_id, a, sqlite) for o in outcomes for a in o.attempts]
    results = [_fit_result((o.request_id, *_result_values(o.result))) for o in outcomes if o.result]
    rows = [_finish_row(o, now if o.status.final else None) for o in outcomes]
    executemany(s, _INSERT_ATTEMPT, attempts)
    executemany(s, _UPSERT_RESULT, results)
    executemany(s, _FINISH_REQUEST, rows)


def _attempt_row(request_id: int, attempt: AttemptRecord, sqlite: bool) -> tuple[Any, ...]:
    """The attempts row of one record, in `_INSERT_ATTEMPT`'s order (started_at as the driver takes it)."""
    values = _attempt_values(attempt)
    if sqlite:
        values = (*values[:_STARTED_AT], db_time_for(True, values[_STARTED_AT]), *values[_STARTED_AT + 1 :])
    return _fit_attempt((request_id, *values))


def _finish_row(o: Outcome, done: Any) -> tuple[Any, ...]:
    """The parameters of `_FINISH_REQUEST` for an outcome (`done`: its finished_at, or None)."""
    values = (o.status.value, len(o.attempts), o.error_type, o.error_message, done, o.request_id, o.fence)
    return _fit_finish(values)


def fail_unstorable(db: Database, outcome: Outcome, reason: str) -> bool:
    """Store `outcome` as failed with `reason`, without its attempts or answer (which could not be stored).

    For an outcome that failed to store on its own: the row must not stay running forever. False when the
    row is no longer held under the outcome's fence.
    """
    failed = Outcome(
        outcome.request_id,
        outcome.fence,
        RequestStatus.FAILED,
        outcome.attempts,
        error_type=ErrorType.UNSTORABLE.value,
        error_message=reason,
    )
    row = _finish_row(failed, db_time_for(db.is_sqlite, utcnow()))
    with db.write() as s:
        stored = executemany(s, _FINISH_REQUEST, [row]) != 0
        if stored and outcome.batch_id:
            usage.add_failures(s, [(outcome.batch_id, ErrorType.UNSTORABLE.value, None, reason)])
    if stored and outcome.batch_id:
        settle_states(db, [outcome.batch_id])
    return stored
