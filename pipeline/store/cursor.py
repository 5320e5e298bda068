"""Following a batch's results as they are stored: which requests became final since the last look.

Results are stored in whatever order answers come back (hundreds in flight, retries with backoff), so a
keyset cursor on request ids alone would skip a result stored after a higher id was seen. The cursor keeps
a *frontier* instead: every request below it is final and was handed out, and above it the ids handed out
so far. Each look reads only ids above the frontier (index (batch_id, status) with the id, SQLite's rowid)
and moves the frontier to the first request that is not final yet, so the ids it remembers are the ones
between that request and the newest answer: about what is in flight, not the batch.

A request handed out is never handed out again, even if `retry` makes it queued and final once more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from pipeline.store.db import Database
from pipeline.store.models import FINAL_STATUSES, Request, RequestStatus

#: Ids read per query.
CHUNK = 1000

_OPEN = (RequestStatus.QUEUED, RequestStatus.RUNNING)
_FINAL = tuple(FINAL_STATUSES)


@dataclass
class ResultCursor:
    """The final requests of one batch not handed out yet, in the order looks find them (by id within one
    look). Not thread-safe: one cursor per reader."""

    db: Database
    batch_id: str
    #: every request with a lower id is final and was handed out
    frontier: int = 0
    #: ids at or above the frontier already handed out
    seen: set[int] = field(default_factory=set)

    def new_ids(self) -> Iterator[list[int]]:
        """The ids of final requests not handed out yet, a chunk at a time; each is marked handed out as its
        chunk is yielded. Then the frontier moves up to the first request still open."""
        first_open = self._first_open()
        after = self.frontier - 1
        while True:
            ids = self._final_ids(after)
            if not ids:
                break
            after = ids[-1]
            fresh = [i for i in ids if i not in self.seen]
            if fresh:
                self.seen.update(fresh)
                yield fresh
        # Open rows found before reading the final ones: whatever finished meanwhile was read above.
        self.frontier = max(self.frontier, first_open if first_open is not None else after + 1)
        self.seen = {i for i in self.seen if i >= self.frontier}

    def _first_open(self) -> int | None:
        with self.db.read() as s:
            return s.scalar(
                select(Request.id)
                .where(
                    Request.batch_id == self.batch_id,
                    Request.id >= self.frontier,
                    Request.status.in_(_OPEN),
                )
                .order_by(Request.id)
                .limit(1)
            )

    def _final_ids(self, after: int) -> list[int]:
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(Request.id)
                    .where(
                        Request.batch_id == self.batch_id,
                        Request.id > after,
                        Request.status.in_(_FINAL),
                    )
                    .order_by(Request.id)
                    .limit(CHUNK)
                )
            )
