"""Batch API parts: the rows a part holds, the engine that advances it, and every step it records.

A part is made in one transaction with its claim (`new_part`): the queued rows it takes become `running`
under the owner name `part:<id>` (no `workers` row: no reaper ever buries a part, so a process that dies
while the remote batch runs never sends those rows again) and all get one fence, above each row's own, kept
in `parts.fence`. Every outcome is then written through `claims.record` under that fence, so only rows
the part still holds are written; rows leave a part only through those writes.

Advancing a part (uploading, creating, polling, storing its answers) is done by one engine at a time: it
takes the part (`take`, as a registered worker whose row must exist, like a claim), writes its state only
while `holder` is still itself (`save`), and releases it (`release`). An engine buried by the reaper frees
the parts it held (`claims.requeue_rows_of`), so another engine carries on. Times compared across
processes (`next_at`) are the database's clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from pipeline.errors import ErrorType
from pipeline.store import claims
from pipeline.store.claims import Outcome, WorkerGone
from pipeline.store.db import Database
from pipeline.store.models import (
    CANCELLED_STATES,
    Batch,
    BatchState,
    Dispatch,
    Part,
    PartState,
    Request,
    RequestStatus,
    Via,
    Worker,
    utcnow,
)
from pipeline.store.sql import db_clock, fitter
from pipeline.store.sql import parts as id_slices

#: What a cancelled row says.
CANCELLED_ROW = {"error_type": ErrorType.CANCELLED.value, "error_message": "cancelled"}
#: Rows read per query when a part's rows are listed.
PAGE = 5000
_fit_part = fitter(Part)


def owner(part_id: str) -> str:
    """The name a part holds its rows under (the rows' `worker`)."""
    return f"part:{part_id}"


# --- planning ------------------------------------------------------------------------------------------


def plannable_rows(db: Database, batch_id: str, after: int, limit: int) -> list[tuple[int, str, str, str]]:
    """(id, custom_id, url, body) of the batch's queued rows for the Batch API (not marked direct), by id."""
    stmt = (
        select(Request.id, Request.custom_id, Request.url, Request.body)
        .where(
            Request.batch_id == batch_id,
            Request.status == RequestStatus.QUEUED,
            Request.via.is_(None),
            Request.id > after,
        )
        .order_by(Request.id)
        .limit(limit)
    )
    with db.read() as s:
        return [(i, c, u, b) for i, c, u, b in s.execute(stmt)]


def mark_direct(db: Database, ids: Sequence[int]) -> None:
    """These queued rows are to be sent directly (audio, which the Batch API does not take)."""
    with db.write() as s:
        for chunk in id_slices(sorted(ids)):
            s.execute(
                update(Request)
                .where(Request.id.in_(chunk), Request.status == RequestStatus.QUEUED)
                .values(via=Via.DIRECT)
            )


def new_part(
    db: Database, part_id: str, batch_id: str, endpoint: str, model: str, ids: Sequence[int]
) -> Part | None:
    """Make a part of the rows among `ids` still queued (not marked direct) in the active batch, and claim
    them for it, in one transaction; None (and nothing made) when none is left.

    The rows are locked first, so the one fence they all get is above every fence they had.
    """
    active = select(Batch.id).where(Batch.id == batch_id, Batch.state == BatchState.IN_PROGRESS)
    with db.write() as s:
        locked: list[tuple[int, int]] = []
        for chunk in id_slices(sorted(ids)):
            stmt = (
                select(Request.id, Request.fence)
                .where(
                    Request.id.in_(chunk),
                    Request.status == RequestStatus.QUEUED,
                    Request.via.is_(None),
                    Request.batch_id.in_(active),
                )
                .order_by(Request.id)
                .with_for_update()
            )
            locked.extend((i, f) for i, f in s.execute(stmt))
        if not locked:
            return None
        fence = max(f for _, f in locked) + 1
        part = Part(
            id=part_id,
            batch_id=batch_id,
            endpoint=endpoint,
            model=_fit_part({"model": model})["model"],
            state=PartState.PLANNED,
            fence=fence,
            lines=len(locked),
            tries=0,
            polls=0,
            created_at=utcnow(),
        )
        s.add(part)
        s.flush()
        for chunk in id_slices([i for i, _ in locked]):
            s.execute(
                update(Request)
                .where(Request.id.in_(chunk))
                .values(status=RequestStatus.RUNNING, worker=owner(part_id), fence=fence)
            )
    return part


def batches_to_plan(db: Database) -> list[str]:
    """Active batch-api batches sent through the broker with queued rows no part holds yet."""
    # Correlated per batch-api batch, so the (batch_id, status) index answers it, whatever the backlog of
    # direct batches.
    waiting = (
        select(Request.id)
        .where(Request.batch_id == Batch.id, Request.status == RequestStatus.QUEUED, Request.via.is_(None))
        .exists()
    )
    stmt = select(Batch.id).where(
        Batch.via == Via.BATCH_API,
        Batch.dispatch == Dispatch.BROKER,
        Batch.state == BatchState.IN_PROGRESS,
        waiting,
    )
    with db.read() as s:
        return list(s.scalars(stmt))


# --- holding -------------------------------------------------------------------------------------------


def take(db: Database, part_id: str, worker: str) -> Part | None:
    """Hold the open part for `worker` if nobody does; None when another engine holds it or it is done.

    Raises WorkerGone when the worker's row is gone (it was declared dead): parts are never taken in the
    name of an engine the others already buried.
    """
    with db.write() as s:
        if s.scalar(select(Worker.id).where(Worker.id == worker).with_for_update(read=True)) is None:
            raise WorkerGone(f"worker {worker} was declared dead")
        done = s.execute(
            update(Part)
            .where(Part.id == part_id, Part.holder.is_(None), Part.state != PartState.DONE)
            .values(holder=worker)
        )
        if not getattr(done, "rowcount", 0):
            return None
        return s.get(Part, part_id)


def release(db: Database, part_id: str, worker: str) -> None:
    """Let go of the part (if `worker` still holds it)."""
    with db.write() as s:
        s.execute(update(Part).where(Part.id == part_id, Part.holder == worker).values(holder=None))


def save(db: Database, part_id: str, worker: str, **values: Any) -> Part | None:
    """Record `values` on the part while `worker` still holds it; the part as stored, or None if lost.

    `next_in` (seconds) sets `next_at` that far ahead on the database's clock.
    """
    delay = values.pop("next_in", None)
    with db.write() as s:
        if delay is not None:
            values["next_at"] = db_clock(s) + timedelta(seconds=float(delay))
        done = s.execute(
            update(Part).where(Part.id == part_id, Part.holder == worker).values(**_fit_part(values))
        )
        if not getattr(done, "rowcount", 0):
            return None
        return s.get(Part, part_id)


# --- reading -------------------------------------------------------------------------------------------


def get_part(db: Database, part_id: str) -> Part | None:
    with db.read() as s:
        return s.get(Part, part_id)


def due_parts(db: Database, batch_id: str | None = None) -> list[str]:
    """Open parts nobody holds whose time has come (of `batch_id`, or of every broker batch when None)."""
    with db.read() as s:
        stmt = select(Part.id).where(
            Part.state != PartState.DONE,
            Part.holder.is_(None),
            or_(Part.next_at.is_(None), Part.next_at <= db_clock(s)),
        )
        if batch_id is not None:
            stmt = stmt.where(Part.batch_id == batch_id)
        else:
            broker = select(Batch.id).where(Batch.dispatch == Dispatch.BROKER)
            stmt = stmt.where(Part.batch_id.in_(broker))
        return list(s.scalars(stmt.order_by(Part.created_at, Part.id)))


def open_count(db: Database, batch_id: str) -> int:
    """Parts of the batch not done yet (held by anyone or no one)."""
    with db.read() as s:
        stmt = select(func.count()).where(Part.batch_id == batch_id, Part.state != PartState.DONE)
        return int(s.scalar(stmt) or 0)


def part_rows(db: Database, part: Part) -> Iterator[tuple[int, str, str, str, int]]:
    """(id, custom_id, url, body, attempts) of every row the part still holds, in id order (its file's)."""
    after = 0
    while True:
        stmt = (
            select(Request.id, Request.custom_id, Request.url, Request.body, Request.attempts)
            .where(
                Request.worker == owner(part.id),
                Request.status == RequestStatus.RUNNING,
                Request.fence == part.fence,
                Request.id > after,
            )
            .order_by(Request.id)
            .limit(PAGE)
        )
        with db.read() as s:
            rows = [(i, c, u, b, a) for i, c, u, b, a in s.execute(stmt)]
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def remote_batches_to_cancel(db: Database, batch_id: str) -> list[str]:
    """Remote batch ids of the batch's parts the API may still be working on."""
    stmt = select(Part.remote_batch_id).where(
        Part.batch_id == batch_id,
        Part.state == PartState.SUBMITTED,
        Part.remote_batch_id.is_not(None),
        or_(Part.remote_status.is_(None), Part.remote_status.in_(("validating", "in_progress"))),
    )
    with db.read() as s:
        return [r for r in s.scalars(stmt) if r is not None]


# --- outcomes ------------------------------------------------------------------------------------------


def requeue(db: Database, part: Part, outcomes: Sequence[Outcome], direct: bool) -> list[Outcome]:
    """Store outcomes that put rows back in the queue (status queued: an expired line, a line the API never
    had a chance at), and let the rows go (to be sent directly when `direct`), in one transaction.

    Returns the outcomes not stored (their rows are no longer the part's).
    """
    if not outcomes:
        return []
    with db.write() as s:
        refused = claims.record_in(s, outcomes, db.is_sqlite)
        gone = {o.request_id for o in refused}
        freed = [o.request_id for o in outcomes if o.request_id not in gone]
        state = s.scalar(select(Batch.state).where(Batch.id == part.batch_id))
        cancelled = state in CANCELLED_STATES
        for chunk in id_slices(sorted(freed)):
            queued = update(Request).where(Request.id.in_(chunk), Request.status == RequestStatus.QUEUED)
            s.execute(queued.values(worker=None, via=Via.DIRECT if direct else None))
            if cancelled:  # a cancelled batch keeps no queued rows
                s.execute(
                    queued.values(status=RequestStatus.CANCELLED, **CANCELLED_ROW, finished_at=utcnow())
                )
    claims.settle_after(db, outcomes, refused)
    return refused
