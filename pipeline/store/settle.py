"""Batch states settle once every row is final: in progress -> completed, cancelling -> cancelled.

Each settle is its own short transaction, after the writes that finished rows committed (the writer's, a
cancel, a burial, a retire): of two engines storing a batch's last rows at once, the one that commits last
sees every row final, so no lock is needed across them and no batch is left behind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from sqlalchemy import select

from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, Batch, BatchState
from pipeline.store.sql import db_clock, db_time_for, executemany, fetch, placeholders

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
    cancelled with queued rows left. Read after every write transaction: straight through the driver."""
    if not batch_ids:
        return []
    with db.read() as s:
        return [row[0] for row in fetch(s, _to_settle_sql(len(batch_ids)), sorted(batch_ids))]


@functools.lru_cache(maxsize=16)
def _to_settle_sql(n: int) -> str:
    return (
        f"SELECT b.id FROM batches b WHERE b.id IN ({placeholders(n)}) AND ("
        f"(b.state IN ({_quoted(SETTLING_STATES)}) AND NOT EXISTS (SELECT 1 FROM requests r"
        " WHERE r.batch_id = b.id AND r.status IN ('queued', 'running')))"
        f" OR (b.state IN ({_quoted(CANCELLED_STATES)}) AND EXISTS (SELECT 1 FROM requests r"
        " WHERE r.batch_id = b.id AND r.status = 'queued'))) ORDER BY b.id"
    )


def _quoted(states: Iterable[BatchState]) -> str:
    return ", ".join(f"'{state.value}'" for state in sorted(states))
