"""Every read and write of request rows that the engine and the commands make, each a short transaction.

Claiming is one conditional UPDATE: a row is taken only while it is `queued`, or `running` with a lease that
ran out (its worker died), and only while its batch is active. Two workers can never both hold a row, and a
redelivered chunk finds its finished rows already final and skips them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Integer, Table, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pipeline.db import Database
from pipeline.errors import BatchNotFound
from pipeline.limits import LimitKey
from pipeline.models import (
    Attempt,
    Batch,
    BatchState,
    Blob,
    Dispatch,
    LimitState,
    Request,
    RequestStatus,
    Result,
    utcnow,
)

#: The requests table, for executemany updates keyed by bind parameters.
REQUESTS = cast(Table, Request.__table__)

#: Ids per IN (...) clause: under SQLite's default limit of host parameters.
IDS_PER_STATEMENT = 900


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request row this worker now holds under a lease."""

    id: int
    batch_id: str
    custom_id: str
    url: str
    body: str
    attempts: int
    #: the stored audio file of a transcription or translation (see `load_blob`)
    blob_sha256: str | None = None


@dataclass(slots=True)
class AttemptRecord:
    number: int
    started_at: Any
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


def claim(db: Database, ids: Sequence[int], worker: str, lease_seconds: float) -> list[Claimed]:
    """Take the claimable rows among `ids` for `worker`; the others (finished, held, paused) are skipped."""
    claimed: list[Claimed] = []
    now = utcnow()
    for part in _parts(ids):
        stmt = (
            update(Request)
            .where(Request.id.in_(part), _claimable(now))
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


def load_blob(db: Database, sha256: str) -> bytes:
    """The bytes of a stored file (an audio clip). Raises LookupError when there is none."""
    with db.read() as s:
        data = s.scalar(select(Blob.data).where(Blob.sha256 == sha256))
    if data is None:
        raise LookupError(f"no stored file with sha256 {sha256}")
    return bytes(data)


def claimable_ids(db: Database, batch_id: str, after: int, limit: int) -> list[int]:
    """Ids of rows of the batch that could be claimed now, in id order, after `after`."""
    stmt = (
        select(Request.id)
        .where(Request.batch_id == batch_id, Request.id > after, _claimable(utcnow()))
        .order_by(Request.id)
        .limit(limit)
    )
    with db.read() as s:
        return list(s.scalars(stmt))


def renew_leases(db: Database, worker: str, ids: Iterable[int], lease_seconds: float) -> None:
    until = utcnow() + timedelta(seconds=lease_seconds)
    for part in _parts(list(ids)):
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
    executemany with named parameters: SQLAlchemy's per-row parameter processing cost more than SQLite.
    """
    if not outcomes:
        return
    sqlite_dates = db.is_sqlite
    stamp = _sqlite_datetime if sqlite_dates else _identity
    now = stamp(utcnow())
    attempts = [
        {"request_id": o.request_id, **_attempt_row(a), "started_at": stamp(a.started_at)}
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
        cursor = s.connection().connection.cursor()
        try:
            if attempts:
                cursor.executemany(_sql(db, _INSERT_ATTEMPT), attempts)
            if results:
                cursor.executemany(_sql(db, _UPSERT_RESULT), results)
            cursor.executemany(_sql(db, _FINISH_REQUEST), rows)
        finally:
            cursor.close()


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"


_ATTEMPT_COLUMNS = (
    "request_id",
    "number",
    "started_at",
    "latency_ms",
    "http_status",
    "error_type",
    "error_message",
    "x_request_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)
_RESULT_COLUMNS = tuple(c.name for c in cast(Table, Result.__table__).columns)
_INSERT_ATTEMPT = _insert_sql("attempts", _ATTEMPT_COLUMNS)
_UPSERT_RESULT = _insert_sql("results", _RESULT_COLUMNS) + (
    " ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _RESULT_COLUMNS if c != "request_id")
)
_FINISH_REQUEST = (
    "UPDATE requests SET status = :new_status, attempts = attempts + :sent, error_type = :etype, "
    "error_message = :emsg, finished_at = :done, lease_until = NULL "
    "WHERE id = :rid AND worker = :worker AND status = 'running'"
)


#: The columns intake writes for each request row.
REQUEST_COLUMNS = (
    "batch_id",
    "line",
    "custom_id",
    "url",
    "body",
    "status",
    "attempts",
    "error_type",
    "error_message",
    "finished_at",
    "created_at",
    "blob_sha256",
)
_INSERT_REQUEST = _insert_sql("requests", REQUEST_COLUMNS)


def insert_requests(db: Database, s: Session, rows: list[dict[str, Any]]) -> None:
    """Insert request rows (dicts keyed by REQUEST_COLUMNS, times from `db_time`) in `s`'s transaction.

    Through the driver's executemany, like `record`: a million-line job file spends most of its intake here.
    """
    if rows:
        cursor = s.connection().connection.cursor()
        try:
            cursor.executemany(_sql(db, _INSERT_REQUEST), rows)
        finally:
            cursor.close()


def db_time(db: Database, value: datetime) -> Any:
    """A datetime as the driver takes it for this database (SQLite: SQLAlchemy's text form)."""
    return _sqlite_datetime(value) if db.is_sqlite else value


def _sql(db: Database, text: str) -> str:
    """`text` (named :params, as sqlite3 takes them) in the driver's own parameter style."""
    return text if db.is_sqlite else re.sub(r":(\w+)", r"%(\1)s", text)


def _sqlite_datetime(value: datetime) -> str:
    """A datetime as SQLAlchemy's SQLite DateTime type stores it (and reads it back)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _identity(value: datetime) -> datetime:
    return value


def batch_states(db: Database, batch_ids: Iterable[str]) -> dict[str, str]:
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        return {
            bid: state for bid, state in s.execute(select(Batch.id, Batch.state).where(Batch.id.in_(ids)))
        }


def set_batch_state(db: Database, batch_id: str, state: BatchState, reason: str | None = None) -> None:
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(state=state, pause_reason=reason))


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


def status_counts(db: Database, batch_id: str) -> dict[str, int]:
    """Requests of the batch by status, every status present (0 when none), plus `total`."""
    with db.read() as s:
        rows = s.execute(
            select(Request.status, func.count()).where(Request.batch_id == batch_id).group_by(Request.status)
        ).all()
    counts = {status.value: 0 for status in RequestStatus}
    counts.update({status: n for status, n in rows})
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


def _claimable(now: Any) -> Any:
    return or_(
        Request.status == RequestStatus.QUEUED,
        and_(Request.status == RequestStatus.RUNNING, Request.lease_until < now),
    )


def _attempt_row(a: AttemptRecord) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": a.started_at,
        "latency_ms": a.latency_ms,
        "http_status": a.http_status,
        "error_type": a.error_type,
        "error_message": a.error_message,
        "x_request_id": a.x_request_id,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.total_tokens,
    }


def _parts(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start : start + IDS_PER_STATEMENT]


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


def queued_ids(db: Database, batch_id: str, page: int = 10_000) -> Iterator[int]:
    """Every queued row of the batch, in id order, paged so memory stays flat."""
    after = 0
    while True:
        with db.read() as s:
            ids = list(
                s.scalars(
                    select(Request.id)
                    .where(
                        Request.batch_id == batch_id,
                        Request.status == RequestStatus.QUEUED,
                        Request.id > after,
                    )
                    .order_by(Request.id)
                    .limit(page)
                )
            )
        yield from ids
        if len(ids) < page:
            return
        after = ids[-1]


def mark_enqueued(db: Database, batch_id: str) -> None:
    """The batch goes through the broker; its queued rows were just named in messages."""
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(dispatch=Dispatch.BROKER))
        s.execute(
            update(Request)
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.QUEUED)
            .values(enqueued_at=utcnow())
        )


def requeue_expired(db: Database) -> list[tuple[str, int]]:
    """Rows whose worker died (lease ran out) go back to queued; returns (batch id, row id) to re-publish."""
    now = utcnow()
    broker_batches = select(Batch.id).where(Batch.dispatch == Dispatch.BROKER)
    stmt = (
        update(Request)
        .where(
            Request.status == RequestStatus.RUNNING,
            Request.lease_until < now,
            Request.batch_id.in_(broker_batches),  # a `pipeline run` batch is picked up by its next run
        )
        .values(status=RequestStatus.QUEUED, worker=None, lease_until=None, enqueued_at=now)
        .returning(Request.batch_id, Request.id)
    )
    with db.write() as s:
        return [(b, i) for b, i in s.execute(stmt)]


def take_unsent(db: Database, older_than: float) -> list[tuple[str, int]]:
    """Queued rows of active broker batches whose last message is older than `older_than` seconds.

    Called only when the broker queue is empty: such rows lost their message (a broker restarted without
    persistence, a publish that failed). Taking them stamps them, so only one worker re-publishes each.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    active_broker = select(Batch.id).where(
        Batch.state == BatchState.ACTIVE, Batch.dispatch == Dispatch.BROKER
    )
    stmt = (
        update(Request)
        .where(
            Request.status == RequestStatus.QUEUED,
            or_(Request.enqueued_at.is_(None), Request.enqueued_at < cutoff),
            Request.batch_id.in_(active_broker),
        )
        .values(enqueued_at=now)
        .returning(Request.batch_id, Request.id)
    )
    with db.write() as s:
        return [(b, i) for b, i in s.execute(stmt)]


def cancel_batch(db: Database, batch_id: str) -> int:
    """Cancel the batch: queued rows (and rows of dead workers) become cancelled. Returns how many."""
    now = utcnow()
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(state=BatchState.CANCELLED))
        done = s.execute(
            update(Request)
            .where(Request.batch_id == batch_id, _claimable(now))
            .values(
                status=RequestStatus.CANCELLED,
                error_type="cancelled",
                error_message="cancelled",
                finished_at=now,
            )
        )
        return int(getattr(done, "rowcount", 0) or 0)


def requeue_final(db: Database, batch_id: str, statuses: Iterable[str]) -> int:
    """Put the batch's rows in `statuses` back to queued (errors cleared), and make the batch active."""
    wanted = [str(s) for s in statuses]
    with db.write() as s:
        s.execute(
            update(Batch).where(Batch.id == batch_id).values(state=BatchState.ACTIVE, pause_reason=None)
        )
        done = s.execute(
            update(Request)
            .where(Request.batch_id == batch_id, Request.status.in_(wanted))
            .values(status=RequestStatus.QUEUED, error_type=None, error_message=None, finished_at=None)
        )
        return int(getattr(done, "rowcount", 0) or 0)


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
        counts[batch_id][status] = n
    return [(b, {"total": sum(counts[b.id].values()), **counts[b.id]}) for b in batches]


def running_count(db: Database, batch_id: str) -> int:
    with db.read() as s:
        return int(
            s.scalar(
                select(func.count()).where(
                    Request.batch_id == batch_id, Request.status == RequestStatus.RUNNING
                )
            )
            or 0
        )


def save_limit_states(db: Database, snapshots: Sequence[tuple[LimitKey, dict[str, Any]]]) -> None:
    """Upsert what the limiter says of each key (limits in force, send rate) for `pipeline status`."""
    if not snapshots:
        return
    now = utcnow()
    rows = [
        {
            "key": str(key),
            "base_url": key.base_url,
            "key_fingerprint": key.key_fingerprint,
            "model": key.model,
            "rpm": snap.get("rpm"),
            "rpm_source": snap.get("rpm_source"),
            "tpm": snap.get("tpm"),
            "tpm_source": snap.get("tpm_source"),
            "sent_rpm": snap.get("sent_rpm"),
            "sent_tpm": snap.get("sent_tpm"),
            "cooldown_until": _from_unix(snap.get("cooldown_until")),
            "updated_at": now,
        }
        for key, snap in snapshots
    ]
    table = cast(Table, LimitState.__table__)
    with db.write() as s:
        dialect_insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        stmt = dialect_insert(table)
        updated = {c.name: stmt.excluded[c.name] for c in table.columns if c.name != "key"}
        s.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=updated), rows)


def limit_states(db: Database, base_url: str, key_fingerprint: str) -> list[LimitState]:
    """The saved limit states of every model used with this base URL and API key."""
    with db.read() as s:
        return list(
            s.scalars(
                select(LimitState)
                .where(LimitState.base_url == base_url, LimitState.key_fingerprint == key_fingerprint)
                .order_by(LimitState.model)
            )
        )


def _from_unix(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None) if value else None
