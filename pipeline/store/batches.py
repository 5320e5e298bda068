"""Batches: creating one at intake, reading its counts for `status`, and the controls (cancel, retry, pause).

Intake writes through a session it holds open for the whole job file (`new_batch`, `insert_requests`,
`seal_batch`), so a rejected file leaves nothing behind. Everything else is a short transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Integer, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.errors import BatchNotFound, ErrorType
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Batch, BatchState, Request, RequestStatus, Via, utcnow
from pipeline.store.sql import columns, executemany, insert_sql

#: The columns intake writes for each request row (the rest belong to claims and recovery).
REQUEST_COLUMNS = columns(Request, without=("id", "fence", "enqueued_at", "worker", "via"))
_INSERT_REQUEST = insert_sql(Request, REQUEST_COLUMNS)


# --- intake --------------------------------------------------------------------------------------------


def new_batch(s: Session, batch: Batch) -> None:
    """Add the batch row in intake's transaction (its content hash and total are set by `seal_batch`)."""
    s.add(batch)
    s.flush()


def insert_requests(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert request rows (dicts keyed by REQUEST_COLUMNS, times from `db_time_for`) in `s`'s transaction.

    Through the driver's executemany: a million-line job file spends most of its intake here.
    """
    executemany(s, _INSERT_REQUEST, rows)


def seal_batch(s: Session, batch_id: str, content_hash: str, total: int, *, unique: bool) -> str | None:
    """Record the batch's content hash and size. With `unique`, the content may be stored once only: the
    id of the batch that already holds it comes back (and this one must be rolled back), else None.

    The unique key on `content_key`, not a check-then-insert, decides: of two intakes of one file at once,
    the second waits for the first to commit (PostgreSQL) or for its write lock (SQLite), then finds it.
    """
    values = {"content_hash": content_hash, "total": total, "content_key": content_hash if unique else None}
    try:
        with s.begin_nested():
            s.execute(update(Batch).where(Batch.id == batch_id).values(**values))
    except IntegrityError:
        holder = s.scalar(select(Batch.id).where(Batch.content_key == content_hash))
        if holder is None:  # some other constraint
            raise
        return holder
    return None


# --- reading -------------------------------------------------------------------------------------------


def get_batch(db: Database, batch_id: str | None) -> Batch:
    """The batch with this id (a unique prefix is enough), or the newest when None."""
    with db.read() as s:
        if batch_id is None:
            batch = s.scalars(
                select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(1)
            ).first()
            if batch is None:
                raise BatchNotFound("no batches yet: submit or run a job file first")
            return batch
        matches = s.scalars(
            select(Batch).where(Batch.id.startswith(batch_id, autoescape=True)).limit(2)
        ).all()
    if len(matches) != 1:
        raise BatchNotFound(
            f"no batch {batch_id!r}" if not matches else f"batch id {batch_id!r} is ambiguous"
        )
    return matches[0]


def batch_states(db: Database, batch_ids: Iterable[str]) -> dict[str, BatchState]:
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        return {
            bid: state for bid, state in s.execute(select(Batch.id, Batch.state).where(Batch.id.in_(ids)))
        }


def status_counts(db: Database, batch_id: str) -> dict[str, int]:
    """Requests of the batch by status, every status present (0 when none), plus `total`."""
    with db.read() as s:
        rows = s.execute(
            select(Request.status, func.count()).where(Request.batch_id == batch_id).group_by(Request.status)
        ).all()
    counts = {status.value: 0 for status in RequestStatus}
    counts.update({status.value: n for status, n in rows})
    return {"total": sum(counts.values()), **counts}


def token_totals(db: Database, batch_id: str) -> dict[str, int | None]:
    """Tokens billed over every attempt of the batch (failed attempts included)."""
    with db.read() as s:
        row = s.execute(
            select(
                func.coalesce(func.sum(Attempt.prompt_tokens), 0),
                func.coalesce(func.sum(Attempt.completion_tokens), 0),
                func.coalesce(func.sum(Attempt.total_tokens), 0),
            )
            .join(Request, Request.id == Attempt.request_id)
            .where(Request.batch_id == batch_id)
        ).one()
    return {"prompt_tokens": row[0], "completion_tokens": row[1], "total_tokens": row[2]}


def error_breakdown(db: Database, batch_id: str, limit: int = 5) -> list[tuple[str, int]]:
    """The most common error types among the batch's failed requests."""
    with db.read() as s:
        rows = s.execute(
            select(Request.error_type, func.count())
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.FAILED)
            .group_by(Request.error_type)
            .order_by(func.count().desc())
            .limit(limit)
        ).all()
    return [(etype or "unknown", n) for etype, n in rows]


def attempt_stats(db: Database, batch_id: str) -> dict[str, Any]:
    """Attempts made, 429s answered, and the first send / last answer times of the batch."""
    with db.read() as s:
        row = s.execute(
            select(
                func.count(Attempt.id),
                func.coalesce(func.sum(func.cast(Attempt.http_status == 429, Integer)), 0),
                func.min(Attempt.started_at),
            )
            .join(Request, Request.id == Attempt.request_id)
            .where(Request.batch_id == batch_id)
        ).one()
        last = s.scalar(select(func.max(Request.finished_at)).where(Request.batch_id == batch_id))
    return {"attempts": row[0], "rate_limited": row[1], "first_sent_at": row[2], "last_finished_at": last}


def list_batches(db: Database, limit: int = 50) -> list[tuple[Batch, dict[str, int]]]:
    """The newest batches with their counts by status."""
    with db.read() as s:
        batches = list(s.scalars(select(Batch).order_by(Batch.created_at.desc()).limit(limit)))
        rows = s.execute(
            select(Request.batch_id, Request.status, func.count())
            .where(Request.batch_id.in_([b.id for b in batches]))
            .group_by(Request.batch_id, Request.status)
        ).all()
    counts: dict[str, dict[str, int]] = {b.id: {st.value: 0 for st in RequestStatus} for b in batches}
    for batch_id, status, n in rows:
        counts[batch_id][status.value] = n
    return [(b, {"total": sum(counts[b.id].values()), **counts[b.id]}) for b in batches]


def running_count(db: Database, batch_id: str, *, direct_only: bool = False) -> int:
    """Rows of the batch in flight (only those marked to be sent directly, if asked)."""
    stmt = select(func.count()).where(Request.batch_id == batch_id, Request.status == RequestStatus.RUNNING)
    if direct_only:
        stmt = stmt.where(Request.via == Via.DIRECT)
    with db.read() as s:
        return int(s.scalar(stmt) or 0)


# --- control -------------------------------------------------------------------------------------------


def retarget(db: Database, batch_id: str, base_url: str, organization: str | None, fingerprint: str) -> None:
    """The batch is sent (again) with this API, organization and key: e.g. resumed after fixing the key."""
    with db.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(base_url=base_url, organization=organization, key_fingerprint=fingerprint)
        )


def set_batch_state(db: Database, batch_id: str, state: BatchState, reason: str | None = None) -> None:
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(state=state, pause_reason=reason))


def cancel_batch(db: Database, batch_id: str) -> int:
    """Cancel the batch: queued rows become cancelled (rows in flight finish). Returns how many."""
    now = utcnow()
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(state=BatchState.CANCELLED))
        done = s.execute(
            update(Request)
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.QUEUED)
            .values(
                status=RequestStatus.CANCELLED,
                error_type=ErrorType.CANCELLED,
                error_message="cancelled",
                finished_at=now,
            )
        )
        return int(getattr(done, "rowcount", 0) or 0)


def requeue_final(db: Database, batch_id: str, statuses: Iterable[RequestStatus]) -> int:
    """Put the batch's rows in `statuses` back to queued (errors cleared), and make the batch active.

    Invalid lines (stored with --skip-invalid) stay failed: they have no request to send.
    """
    wanted = list(statuses)
    with db.write() as s:
        s.execute(
            update(Batch).where(Batch.id == batch_id).values(state=BatchState.ACTIVE, pause_reason=None)
        )
        done = s.execute(
            update(Request)
            .where(
                Request.batch_id == batch_id,
                Request.status.in_(wanted),
                Request.error_type.is_distinct_from(ErrorType.INVALID_LINE),
            )
            .values(status=RequestStatus.QUEUED, error_type=None, error_message=None, finished_at=None)
        )
        return int(getattr(done, "rowcount", 0) or 0)
