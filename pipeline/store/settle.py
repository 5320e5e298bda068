"""Batch states settle once every row is final: in progress -> completed, cancelling -> cancelled.

Each settle is its own short transaction, after the writes that finished rows committed (the writer's, a
cancel, a burial, a retire): of two engines storing a batch's last rows at once, the one that commits last
sees every row final, so no lock is needed across them and no batch is left behind.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, or_, select

from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, Batch, BatchState, Request, RequestStatus
from pipeline.store.sql import db_clock, db_time_for, executemany

#: A cancelled batch keeps no queued rows (an engine may release rows before it sees the cancel).
_CANCEL_LEFT = (
    "UPDATE requests SET status = 'cancelled', error_type = 'cancelled', error_message = 'cancelled',"
    " finished_at = :now WHERE batch_id = :batch_id AND status = 'queued' AND EXISTS (SELECT 1 FROM batches b"
    " WHERE b.id = :batch_id AND b.state IN ('cancelling', 'cancelled'))"
)
#: Batches whose every row is final move on: in progress -> completed, cancelling -> cancelled.
_SETTLE = (
    "UPDATE batches SET state = CASE state WHEN 'cancelling' THEN 'cancelled' ELSE 'completed' END,"
    " finished_at = :now WHERE id = :batch_id AND state IN ('in_progress', 'cancelling')"
    " AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = batches.id"
    " AND r.status IN ('queued', 'running'))"
)


def settle_open(db: Database) -> None:
    """`settle_states` for every batch in progress or cancelling: the recovery passes' safety net."""
    with db.read() as s:
        ids = list(s.scalars(select(Batch.id).where(Batch.state.in_(SETTLING_STATES))))
    settle_states(db, ids)


#: States a batch leaves by itself once every row is final.
SETTLING_STATES = (BatchState.IN_PROGRESS, BatchState.CANCELLING)


def settle_states(db: Database, batch_ids: Iterable[str]) -> None:
    """Mark the batches whose every row is final completed (or cancelled), with `finished_at`; first, a
    cancelled batch's queued rows are cancelled.

    After the writes that finished rows committed: of two engines storing a batch's last rows at once, the
    one that commits last sees every row final, so it needs no lock across them. A read (no write lock, a
    few indexed probes per batch) finds the batches with something to do; only those take a write
    transaction, so a batch in full flow costs its writers no second write per transaction.
    """
    ids = _to_settle(db, set(batch_ids))
    if not ids:
        return
    with db.write() as s:
        # Batch rows first, as cancel_batch takes them: two transactions never wait on each other crosswise.
        s.execute(select(Batch.id).where(Batch.id.in_(ids)).order_by(Batch.id).with_for_update())
        now = db_time_for(db.is_sqlite, db_clock(s))
        rows = [{"batch_id": b, "now": now} for b in ids]
        executemany(s, _CANCEL_LEFT, rows)
        executemany(s, _SETTLE, rows)


def _to_settle(db: Database, batch_ids: set[str]) -> list[str]:
    """Those of the batches that are done (in progress or cancelling, no row queued or running), or
    cancelled with queued rows left."""
    if not batch_ids:
        return []
    open_rows = select(Request.id).where(
        Request.batch_id == Batch.id, Request.status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING])
    )
    queued = select(Request.id).where(Request.batch_id == Batch.id, Request.status == RequestStatus.QUEUED)
    stmt = select(Batch.id).where(
        Batch.id.in_(sorted(batch_ids)),
        or_(
            and_(Batch.state.in_(SETTLING_STATES), ~open_rows.exists()),
            and_(Batch.state.in_(CANCELLED_STATES), queued.exists()),
        ),
    )
    with db.read() as s:
        return sorted(s.scalars(stmt))
