"""Claims and outcomes: taking request rows to send, keeping them, and storing what became of them.

Claiming is one conditional UPDATE: a row is taken only while it is `queued`, or `running` with a lease that
ran out (its worker died), and only while its batch is active. Two workers can never both hold a row, and a
redelivered chunk finds its finished rows already final and skips them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from pipeline.store.db import Database
from pipeline.store.models import Attempt, Batch, BatchState, Request, RequestStatus, Result, utcnow
from pipeline.store.sql import columns, db_time_for, executemany, insert_sql, parts, upsert_sql


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request row this worker now holds under a lease."""

    id: int
    batch_id: str
    custom_id: str
    url: str
    body: str
    attempts: int
    #: the stored audio file of a transcription or translation (see `blobs.load_blob`)
    blob_sha256: str | None = None


@dataclass(slots=True)
class AttemptRecord:
    """One HTTP attempt, as the `attempts` table stores it (every column but the ids)."""

    number: int
    started_at: datetime
    latency_ms: float
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    x_request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(slots=True)
class Outcome:
    """What became of one claimed request: final (succeeded/failed/cancelled) or released back to queued."""

    request_id: int
    status: RequestStatus
    attempts: list[AttemptRecord] = field(default_factory=list)
    result: dict[str, Any] | None = None  #: Result columns, without request_id
    error_type: str | None = None
    error_message: str | None = None


#: The attempts columns an AttemptRecord fills (with request_id).
ATTEMPT_COLUMNS = columns(Attempt, without=("id",))
_ATTEMPT_FIELDS = tuple(c for c in ATTEMPT_COLUMNS if c != "request_id")
RESULT_COLUMNS = columns(Result)
_INSERT_ATTEMPT = insert_sql(Attempt, ATTEMPT_COLUMNS)
_UPSERT_RESULT = upsert_sql(Result, "request_id", RESULT_COLUMNS)
_FINISH_REQUEST = (
    "UPDATE requests SET status = :new_status, attempts = attempts + :sent, error_type = :etype, "
    "error_message = :emsg, finished_at = :done, lease_until = NULL "
    "WHERE id = :rid AND worker = :worker AND status = 'running'"
)


def claim(db: Database, ids: Sequence[int], worker: str, lease_seconds: float) -> list[Claimed]:
    """Take the claimable rows among `ids` for `worker`; the others (finished, held, paused) are skipped."""
    claimed: list[Claimed] = []
    now = utcnow()
    for part in parts(ids):
        stmt = (
            update(Request)
            .where(Request.id.in_(part), claimable(now))
            .where(Request.batch_id.in_(select(Batch.id).where(Batch.state == BatchState.ACTIVE)))
            .values(
                status=RequestStatus.RUNNING,
                worker=worker,
                lease_until=now + timedelta(seconds=lease_seconds),
            )
            .returning(
                Request.id,
                Request.batch_id,
                Request.custom_id,
                Request.url,
                Request.body,
                Request.attempts,
                Request.blob_sha256,
            )
        )
        with db.write() as s:
            claimed.extend(Claimed(*row) for row in s.execute(stmt))
    claimed.sort(key=lambda c: c.id)
    return claimed


def claimable_ids(db: Database, batch_id: str, after: int, limit: int) -> list[int]:
    """Ids of rows of the batch that could be claimed now, in id order, after `after`."""
    stmt = (
        select(Request.id)
        .where(Request.batch_id == batch_id, Request.id > after, claimable(utcnow()))
        .order_by(Request.id)
        .limit(limit)
    )
    with db.read() as s:
        return list(s.scalars(stmt))


def renew_leases(db: Database, worker: str, ids: Iterable[int], lease_seconds: float) -> None:
    until = utcnow() + timedelta(seconds=lease_seconds)
    for part in parts(list(ids)):
        with db.write() as s:
            s.execute(
                update(Request)
                .where(
                    Request.id.in_(part), Request.worker == worker, Request.status == RequestStatus.RUNNING
                )
                .values(lease_until=until)
            )


def record(db: Database, worker: str, outcomes: Sequence[Outcome]) -> None:
    """Store a batch of outcomes in one transaction: attempts, results, and the rows' new status.

    This is the hottest write path (every request passes here), so it goes straight to the driver's
    executemany with named parameters.
    """
    if not outcomes:
        return
    sqlite = db.is_sqlite
    now = db_time_for(sqlite, utcnow())
    attempts = [
        {
            "request_id": o.request_id,
            **{name: getattr(a, name) for name in _ATTEMPT_FIELDS},
            "started_at": db_time_for(sqlite, a.started_at),
        }
        for o in outcomes
        for a in o.attempts
    ]
    results = [{"request_id": o.request_id, **o.result} for o in outcomes if o.result is not None]
    rows = [
        {
            "rid": o.request_id,
            "worker": worker,
            "new_status": o.status.value,
            "sent": len(o.attempts),
            "etype": o.error_type,
            "emsg": o.error_message,
            "done": now if o.status.final else None,
        }
        for o in outcomes
    ]
    with db.write() as s:
        executemany(s, _INSERT_ATTEMPT, attempts)
        executemany(s, _UPSERT_RESULT, results)
        executemany(s, _FINISH_REQUEST, rows)


def claimable(now: Any) -> Any:
    """Rows a worker may take: queued, or running under a lease that ran out."""
    return or_(
        Request.status == RequestStatus.QUEUED,
        and_(Request.status == RequestStatus.RUNNING, Request.lease_until < now),
    )
