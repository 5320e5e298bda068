"""Recovery: engines that died give their rows back, and rows whose broker message was lost are found again.

`Reaper.sweep` is run by every worker's keeper and by `pipeline run`. It watches the beats of the other
engines (store/claims.py) on this process's own monotonic clock: an engine whose beat has not moved for a
whole lease, while this process could read the database, is dead; so is one on this host whose process is
gone (found at once: a rerun of `pipeline run` after a kill takes over in a second, not a lease), and
since a database outage stops every beat, it alone never buries anyone. Burying an engine is one transaction
that locks its worker row, checks the beat is still the one watched, gives every row it held back to the
queue with a new fence, and deletes the row; so it runs wholly before or after any claim or beat of it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta

from sqlalchemy import delete, or_, select, update

from pipeline.store import fair
from pipeline.store.claims import requeue_rows_of, sent_directly
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, Dispatch, Request, RequestStatus, Via, Worker
from pipeline.store.settle import settle_open, settle_states
from pipeline.store.sql import db_clock, parts

log = logging.getLogger(__name__)


class Reaper:
    """Remembers, per engine, the beat last seen and when (this process's monotonic clock).

    Each engine is given its own lease (stored with it), not the watcher's: workers configured with
    different leases never bury each other early.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.host = socket.gethostname()
        self._seen: dict[str, tuple[int, float]] = {}
        self._swept_at: float | None = None

    def sweep(self, spare: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
        """Bury every dead engine but those in `spare` (this process's); returns the rows freed."""
        now = time.monotonic()
        gap = 0.0 if self._swept_at is None else now - self._swept_at
        self._swept_at = now
        try:
            with self.db.read() as s:
                workers = list(
                    s.execute(select(Worker.id, Worker.host, Worker.pid, Worker.beat, Worker.lease_seconds))
                )
        except Exception:
            # While this process cannot see the database, silence proves nothing: nobody could beat.
            # Start watching afresh once it can, so an outage alone never buries a live engine.
            self._seen.clear()
            raise
        self._seen = {w: v for w, v in self._seen.items() if any(w == row[0] for row in workers)}
        settle_open(self.db)  # a batch whose last write could not settle its state is settled here
        freed: list[tuple[str, int]] = []
        for worker, host, pid, beat, lease_seconds in workers:
            if worker in spare:
                continue
            if gap >= lease_seconds:
                # This process was not watching for a whole lease (stopped, starved): the silence it would
                # count includes its own. On SQLite, a stopped holder of the write lock also kept everyone
                # else from beating. Start watching this engine afresh.
                self._seen.pop(worker, None)
            silent = now - self._beat_seen_at(worker, beat, now)
            gone = host == self.host and not process_alive(pid)
            if gone or silent >= lease_seconds:
                rows = bury(self.db, worker, beat)
                if rows is None:  # it beat while this waited for the lock: alive after all
                    continue
                why = "its process is gone" if gone else f"no beat for {silent:.0f}s"
                log.warning("engine %s is dead (%s): %d rows back to the queue", worker, why, len(rows))
                freed += rows
        return freed

    def _beat_seen_at(self, worker: str, beat: int, now: float) -> float:
        """When this process first saw `worker` at `beat` (now, if the beat is new)."""
        seen = self._seen.get(worker)
        if seen is None or seen[0] != beat:
            self._seen[worker] = seen = (beat, now)
        return seen[1]


def bury(db: Database, worker: str, beat: int) -> list[tuple[str, int]] | None:
    """If `worker` still has the beat `beat`, give its rows back and delete it; returns the rows freed, or
    None when it was not buried here (it beat meanwhile, or another watcher buried it)."""
    with db.write() as s:
        current = s.scalar(select(Worker.beat).where(Worker.id == worker).with_for_update())
        if current != beat:
            return None
        rows = requeue_rows_of(s, worker)
        s.execute(delete(Worker).where(Worker.id == worker))
    settle_states(db, {batch_id for batch_id, _ in rows})  # a cancelling batch may be done now
    return rows


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True  # no /proc (macOS): signal 0 said it exists


def queued_ids(
    db: Database, batch_id: str, page: int = 10_000, *, direct_only: bool = False
) -> Iterator[int]:
    """Every queued row of the batch (only those marked direct, if asked), in id order, paged so memory
    stays flat."""
    after = 0
    while True:
        stmt = (
            select(Request.id)
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.QUEUED, Request.id > after)
            .order_by(Request.id)
            .limit(page)
        )
        if direct_only:
            stmt = stmt.where(Request.via == Via.DIRECT)
        with db.read() as s:
            ids = list(s.scalars(stmt))
        yield from ids
        if len(ids) < page:
            return
        after = ids[-1]


def mark_enqueued(db: Database, batch_id: str, queue: str) -> int:
    """The batch goes through the broker on `queue` and joins the fair share of the batches running there
    (store/fair.py); its queued rows that engines may send are stamped as published (a Batch API part's
    are the part's). Returns how many."""
    with db.write() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(dispatch=Dispatch.BROKER))
        fair.join(s, batch_id, queue)
        done = s.execute(
            update(Request)
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.QUEUED, sent_directly())
            .values(enqueued_at=db_clock(s))
        )
        return int(getattr(done, "rowcount", 0) or 0)


def broker_batches(db: Database, batch_ids: Iterable[str]) -> set[str]:
    """Those of `batch_ids` that go through the broker (the others belong to a `pipeline run`)."""
    ids = list(batch_ids)
    if not ids:
        return set()
    with db.read() as s:
        return set(s.scalars(select(Batch.id).where(Batch.id.in_(ids), Batch.dispatch == Dispatch.BROKER)))


def stamp_enqueued(db: Database, ids: Sequence[int]) -> None:
    """These rows were just named in a broker message again."""
    with db.write() as s:
        now = db_clock(s)
        for part in parts(list(ids)):
            s.execute(update(Request).where(Request.id.in_(part)).values(enqueued_at=now))


def take_unsent(db: Database, older_than: float, queues: Sequence[str]) -> list[tuple[str, int]]:
    """Queued rows of broker batches in progress on `queues` whose last message is older than `older_than` s.

    Called only when those queues are empty: such rows lost their message (a broker restarted without
    persistence, a publish that failed, an engine buried). Taking them stamps them, on the database's
    clock, so only one worker re-publishes each.
    """
    active_broker = select(Batch.id).where(
        Batch.state == BatchState.IN_PROGRESS,
        Batch.dispatch == Dispatch.BROKER,
        Batch.queue.in_(list(queues)),
    )
    with db.write() as s:
        now = db_clock(s)
        stmt = (
            update(Request)
            .where(
                Request.status == RequestStatus.QUEUED,
                or_(Request.enqueued_at.is_(None), Request.enqueued_at < now - timedelta(seconds=older_than)),
                Request.batch_id.in_(active_broker),
                sent_directly(),  # the rest of a batch-api batch waits for its parts, never for a message
            )
            .values(enqueued_at=now)
            .returning(Request.batch_id, Request.id)
        )
        return [(b, i) for b, i in s.execute(stmt)]
