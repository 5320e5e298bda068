"""Batches: creating one at intake, reading them (what `status` reads is in overview.py), and the controls.

States: in_progress -> completed when every row is final (`settle.settle_states`, after the writes that
finished them); paused by an engine (quota, a wrong key, the spend cap...) until `resume`; cancel makes it
cancelling, then cancelled once the rows in flight are final.

Intake writes through a session it holds open for the whole job file (`new_batch`, `insert_requests`,
`seal_batch`), so a rejected file leaves nothing behind. Everything else is a short transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.errors import BatchNotFound, ErrorType
from pipeline.store import usage
from pipeline.store.db import Database
from pipeline.store.models import (
    AccountState,
    Batch,
    BatchState,
    Request,
    RequestStatus,
    Result,
    Via,
    Worker,
    utcnow,
)
from pipeline.store.overview import FailureGroup as FailureGroup
from pipeline.store.overview import failure_groups as failure_groups
from pipeline.store.overview import find_batch
from pipeline.store.overview import in_flight as in_flight
from pipeline.store.overview import status_counts as status_counts
from pipeline.store.settle import settle_states
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


def set_reused(s: Session, batch_id: str, reused: int) -> None:
    """How many of the batch's requests intake answered from stored answers."""
    s.execute(update(Batch).where(Batch.id == batch_id).values(reused=reused))


# --- reading -------------------------------------------------------------------------------------------


def get_batch(db: Database, batch_id: str | None) -> Batch:
    """The batch with this id (a unique prefix is enough), or the newest when None."""
    found = find_batch(db, batch_id)
    with db.read() as s:
        batch = s.get(Batch, found.id)
    if batch is None:  # pragma: no cover - batches are never deleted
        raise BatchNotFound(f"no batch {found.id!r}")
    return batch


@dataclass(frozen=True, slots=True)
class Control:
    """What an engine must know of a batch before sending one of its rows."""

    state: BatchState
    max_cost_usd: float | None


def batch_states(db: Database, batch_ids: Iterable[str]) -> dict[str, BatchState]:
    return {bid: control.state for bid, control in batch_controls(db, batch_ids).items()}


def batch_controls(db: Database, batch_ids: Iterable[str]) -> dict[str, Control]:
    """State and spend cap of each batch."""
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        rows = s.execute(select(Batch.id, Batch.state, Batch.max_cost_usd).where(Batch.id.in_(ids)))
        return {bid: Control(state, cap) for bid, state, cap in rows}


def pool_specs(db: Database, batch_ids: Iterable[str]) -> dict[str, list[dict[str, object]] | None]:
    """The pool of accounts each batch is sent through (None: the sender's own account)."""
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        rows = s.execute(select(Batch.id, Batch.accounts).where(Batch.id.in_(ids)))
        return {batch_id: accounts for batch_id, accounts in rows}


def failed_rows(db: Database, batch_id: str) -> Iterator[tuple[str, str | None, int | None, str | None, int]]:
    """(custom_id, error type, HTTP status, message, attempts) of every failed request, in id order."""
    stmt = (
        select(
            Request.custom_id, Request.error_type, Result.http_status, Request.error_message, Request.attempts
        )
        .select_from(Request)
        .outerjoin(Result, Result.request_id == Request.id)
        .where(Request.batch_id == batch_id, Request.status == RequestStatus.FAILED)
        .order_by(Request.id)
        .execution_options(yield_per=2000, stream_results=True)
    )
    with db.read() as s:
        for row in s.execute(stmt):
            yield row[0], row[1], row[2], row[3], row[4]


def flights_of_others(db: Database, batch_ids: Sequence[str], worker: str) -> dict[str, float]:
    """USD the engines other than `worker` hold reserved for requests of each batch."""
    with db.read() as s:
        rows = s.execute(select(Worker.id, Worker.flights).where(Worker.flights.is_not(None))).all()
    held: dict[str, float] = {}
    for who, flights in rows:
        if who == worker or not flights:
            continue
        for batch_id in batch_ids:
            if batch_id in flights:
                held[batch_id] = held.get(batch_id, 0.0) + float(flights[batch_id][1])
    return held


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


def retarget(
    db: Database,
    batch_id: str,
    base_url: str,
    organization: str | None,
    key_fingerprint: str,
    accounts: list[dict[str, object]] | None = None,
) -> None:
    """The batch is sent (again) with this API, organization and key, or this pool of accounts (`accounts`,
    None: the sender's own): e.g. resumed after fixing the key. Every benched account is active again."""
    with db.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                base_url=base_url,
                organization=organization,
                key_fingerprint=key_fingerprint,
                accounts=accounts,
            )
        )
        s.execute(delete(AccountState).where(AccountState.batch_id == batch_id))


def set_max_cost(db: Database, batch_id: str, max_cost_usd: float | None) -> None:
    """The batch's spend cap (None: no cap)."""
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(max_cost_usd=max_cost_usd))


def pause_batch(db: Database, batch_id: str, reason: str) -> None:
    """Pause the batch with the reason, if it is in progress (a cancelled or finished one stays so)."""
    with db.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.state == BatchState.IN_PROGRESS)
            .values(state=BatchState.PAUSED, pause_reason=reason)
        )


def cancel_batch(db: Database, batch_id: str) -> int:
    """Cancel the batch: queued rows become cancelled; rows in flight finish, and then it is `cancelled`.

    Returns how many queued rows were cancelled here (engines cancel the rows they hold unsent).
    """
    now = utcnow()
    with db.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.state.not_in([BatchState.COMPLETED, BatchState.CANCELLED]))
            .values(state=BatchState.CANCELLING)
        )
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
    settle_states(db, [batch_id])
    return int(getattr(done, "rowcount", 0) or 0)


def requeue_final(db: Database, batch_id: str, statuses: Iterable[RequestStatus]) -> int:
    """Put the batch's rows in `statuses` back to queued (errors cleared); the batch is in progress again
    (and completed at once when nothing is left to send), every benched account of its pool active again.

    Invalid lines (stored with --skip-invalid) stay failed: they have no request to send.
    """
    wanted = list(statuses)
    with db.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(state=BatchState.IN_PROGRESS, pause_reason=None, finished_at=None)
        )
        s.execute(delete(AccountState).where(AccountState.batch_id == batch_id))
        done = s.execute(
            update(Request)
            .where(
                Request.batch_id == batch_id,
                Request.status.in_(wanted),
                Request.error_type.is_distinct_from(ErrorType.INVALID_LINE),
            )
            .values(status=RequestStatus.QUEUED, error_type=None, error_message=None, finished_at=None)
        )
        if RequestStatus.FAILED in wanted:
            usage.rebuild_failures(s, batch_id)
    settle_states(db, [batch_id])
    return int(getattr(done, "rowcount", 0) or 0)
