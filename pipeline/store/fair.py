"""Fair share of the workers among the batches submitted to one queue: claims by share, and priorities.

A broker message is capacity, not a list of rows: the worker that takes it claims up to that many of the
next queued rows of the batches running on the message's queue, by share (`claim_share`), a piece at a
time as its engine needs rows (fleet/worker.py). First by what the claiming engine lacks: the batch with
the fewest rows waiting there for its priority; then by virtual time: each batch's `vtime` counts the rows
claimed for it divided by its `priority`, the batch furthest behind first. So batches running together are
claimed in proportion to their priorities, and a batch submitted after a big one is claimed at once instead
of after it. A batch joins at the lowest `vtime` of the batches running on its queue (`join`, on submit,
retry and resume): it neither waits for the others to catch up with it nor takes the workers for itself
until it has caught up with them.

Every claim is one transaction that locks its batch's row first, then claims with `FOR UPDATE SKIP LOCKED`
(PostgreSQL; SQLite serialises writers anyway), then advances the batch's `vtime`: the same order
(batch, then its requests) as cancel, retry and resume, so none of them can deadlock with a claim. The
guarantees of `claims.claim` hold: only queued rows of active batches, fences bumped, WorkerGone when the
engine's worker row is gone (held FOR SHARE for the claim).

Capacity is never short: `pipeline submit`, retry and resume publish one message of capacity per chunk
of queued rows; the rows a message takes from another batch leave that batch's own messages capacity for
rows elsewhere; a paused or cancelled batch is never claimed, so its messages serve the others; rows that
go back to the queue get capacity again (drain: the message itself; a dead engine: its reaper; resume: the
publish), and `recovery.take_unsent` is the last resort for any other loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, exists, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from pipeline.errors import BatchNotFound
from pipeline.store.claims import CLAIMED_COLUMNS, Claimed, claimed_row, hold_worker, sent_directly
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, Dispatch, Request, RequestStatus

#: The batch states whose rows may be claimed.
CLAIMABLE = BatchState.IN_PROGRESS
#: Highest priority `pipeline priority` accepts (a weight: 1000 against 1 is already all the budget).
MAX_PRIORITY = 1000


@dataclass(frozen=True, slots=True)
class Candidate:
    """A batch running on the queue, with queued rows."""

    id: str
    vtime: float
    priority: int


def claim_share(
    db: Database,
    worker: str,
    capacity: int,
    queue: str,
    *,
    waiting: Mapping[str, int] | None = None,
    hint: str | None = None,
    missing_only: bool = False,
) -> list[Claimed]:
    """Claim up to `capacity` queued rows of the batches running on `queue`, by share.

    The batch with the fewest rows `waiting` in the claiming engine (for the limiter) for its priority goes
    first: every engine keeps rows of every running batch, in proportion to their priorities, waiting for
    their turns (which the limiter decides, ratelimit/fair.py), a batch submitted meanwhile is claimed at
    once, and a batch on a slow key is not stocked up while one on a fast key runs dry. Then the lowest
    vtime (rows claimed per priority since joining), then `hint` (the batch the message was published for).
    With `missing_only`, only batches with no rows waiting in the engine are claimed. Raises WorkerGone
    when the worker's row is gone.
    """
    waiting = waiting or {}
    claimed: list[Claimed] = []
    tried: set[str] = set()
    while len(claimed) < capacity:
        with db.write() as s:
            hold_worker(s, worker)
            order = sorted(
                (
                    c
                    for c in candidates(s, queue)
                    if c.id not in tried and not (missing_only and waiting.get(c.id))
                ),
                key=lambda c: (waiting.get(c.id, 0) / c.priority, c.vtime, c.id != hint, c.id),
            )
            if not order:
                break
            batch = order[0]
            tried.add(batch.id)
            claimed += _claim_from(s, batch.id, capacity - len(claimed), worker, db.is_sqlite)
    claimed.sort(key=lambda c: c.id)
    return claimed


def claimable(batch_id: InstrumentedAttribute[str] | str) -> ColumnElement[bool]:
    """The rows a claim by share may take of the batch `batch_id` (a value or a column): its queued ones
    that an engine may send (a Batch API part's rows are the part's: `claims.sent_directly`).

    Every query here (candidates, joining, picking) goes through this one condition.
    """
    return and_(Request.batch_id == batch_id, Request.status == RequestStatus.QUEUED, sent_directly())


def candidates(s: Session, queue: str) -> list[Candidate]:
    """The batches whose rows a message on `queue` may claim now."""
    queued = exists().where(claimable(Batch.id))
    rows = s.execute(
        select(Batch.id, Batch.vtime, Batch.priority).where(
            Batch.state == CLAIMABLE, Batch.dispatch == Dispatch.BROKER, Batch.queue == queue, queued
        )
    )
    return [Candidate(bid, float(vtime), max(1, int(priority))) for bid, vtime, priority in rows]


def _claim_from(s: Session, batch_id: str, limit: int, worker: str, sqlite: bool) -> list[Claimed]:
    """Claim up to `limit` queued rows of one batch and advance its vtime, in `s`'s transaction."""
    # The batch's row first: a cancel or a pause committed meanwhile is seen here, and claims of one batch
    # queue on it (on SQLite the whole transaction already holds the write lock).
    held = s.execute(
        select(Batch.priority).where(Batch.id == batch_id, Batch.state == CLAIMABLE).with_for_update()
    ).first()
    if held is None:
        return []
    pick = select(Request.id).where(claimable(batch_id)).limit(limit)
    if not sqlite:
        pick = pick.with_for_update(skip_locked=True)
    # Two statements: PostgreSQL may run a LIMIT ... SKIP LOCKED subquery of an UPDATE more than once, and
    # update more rows than the limit.
    ids = list(s.scalars(pick))
    if not ids:
        return []
    stmt = (
        update(Request)
        .where(Request.id.in_(ids), Request.status == RequestStatus.QUEUED)
        .values(status=RequestStatus.RUNNING, worker=worker, fence=Request.fence + 1)
        .returning(*CLAIMED_COLUMNS)
    )
    rows = [claimed_row(row, worker) for row in s.execute(stmt)]
    if rows:
        weight = max(1, int(held[0]))
        s.execute(update(Batch).where(Batch.id == batch_id).values(vtime=Batch.vtime + len(rows) / weight))
    return rows


def join(s: Session, batch_id: str, queue: str) -> None:
    """The batch (being enqueued on `queue`) joins the others running there at the lowest vtime among
    them, in the caller's transaction; with none running, it keeps its own."""
    others = select(func.min(Batch.vtime)).where(
        Batch.id != batch_id,
        Batch.state == CLAIMABLE,
        Batch.dispatch == Dispatch.BROKER,
        Batch.queue == queue,
        exists().where(claimable(Batch.id)),
    )
    floor = s.scalar(others)
    values: dict[str, object] = {"queue": queue}
    if floor is not None:
        values["vtime"] = float(floor)
    s.execute(update(Batch).where(Batch.id == batch_id).values(**values))


def set_priority(db: Database, batch_id: str, priority: int) -> None:
    """Change the batch's priority; claims use it at once, engines' limiters within a second."""
    if not 1 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between 1 and {MAX_PRIORITY}, got {priority}")
    with db.write() as s:
        done = s.execute(update(Batch).where(Batch.id == batch_id).values(priority=priority))
        if not getattr(done, "rowcount", 1):
            raise BatchNotFound(f"no batch {batch_id!r}")


def priorities(db: Database, batch_ids: Iterable[str]) -> dict[str, int]:
    """The priority of each of these batches."""
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        rows = s.execute(select(Batch.id, Batch.priority).where(Batch.id.in_(ids)))
        return {bid: max(1, int(priority)) for bid, priority in rows}


def batch_queues(db: Database, batch_ids: Iterable[str]) -> dict[str, str]:
    """The queue of each of these batches that goes through the broker (the others are left out)."""
    ids = list(batch_ids)
    if not ids:
        return {}
    with db.read() as s:
        rows = s.execute(
            select(Batch.id, Batch.queue).where(Batch.id.in_(ids), Batch.dispatch == Dispatch.BROKER)
        )
        return {bid: queue for bid, queue in rows if queue is not None}
