"""Recovery: rows whose worker died go back to the queue, and rows whose broker message was lost are found.

Used by the workers' keeper (and by dispatch when it enqueues a batch). Each statement is one conditional
`UPDATE ... RETURNING`, so when several workers recover at once each row is taken by one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import or_, select, update

from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, Dispatch, Request, RequestStatus, utcnow


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
