"""Per-batch counters for the web view's charts, kept as attempts and answers are written.

`batch_series` counts a batch's attempts per second they started (2xx, 429, other errors, tokens);
`batch_tallies` counts its attempts per latency bucket (`LATENCY_BOUNDS`) and its answers per finish
reasons. `claims.record` adds the outcomes of every transaction it writes (`add_outcomes`: two executemany
of upserts, rows sorted so writers lock them in one order), so a batch's charts read a few thousand rows
instead of every attempt of a million-request batch (a pass over 1.5M attempts took 18 s on SQLite).
Migration 0010 and `rebuild` count them from the attempts for batches written before.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pipeline.store.models import Attempt, BatchSeries, BatchTally, Request, RequestStatus, Result
from pipeline.store.sql import db_time_for, executemany, fitter

if TYPE_CHECKING:
    from pipeline.store.outcomes import Outcome

#: Latency histogram bounds (ms): 61 log-spaced bounds from 10 ms to 20 minutes, ~21% apart. Bucket k
#: holds latencies in [bound k-1, bound k); bucket 0 below 10 ms, bucket 61 from 20 minutes.
LATENCY_BOUNDS = tuple(round(10 * (120_000 ** (k / 60)), 1) for k in range(61))
#: `batch_tallies.kind` of the latency histogram and of the finish reasons.
LATENCY, FINISH = "latency", "finish"

_SERIES = ("ok", "rate_limited", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
_ADD_SERIES = (
    "INSERT INTO batch_series (batch_id, second, "
    + ", ".join(_SERIES)
    + ") VALUES (:batch_id, :second, "
    + ", ".join(":" + c for c in _SERIES)
    + ") ON CONFLICT (batch_id, second) DO UPDATE SET "
    + ", ".join(f"{c} = batch_series.{c} + excluded.{c}" for c in _SERIES)
)
_ADD_TALLIES = (
    "INSERT INTO batch_tallies (batch_id, kind, name, count) VALUES (:batch_id, :kind, :name, :count)"
    " ON CONFLICT (batch_id, kind, name) DO UPDATE SET count = batch_tallies.count + excluded.count"
)
_fit_tally = fitter(BatchTally)


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of a latency."""
    return bisect_right(LATENCY_BOUNDS, latency_ms)


class Counts:
    """Series and tallies being added up, then written in one go."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, datetime], list[int]] = {}
        self.tallies: dict[tuple[str, str, str], int] = {}

    def attempt(
        self, batch_id: str, started_at: datetime, latency_ms: float, http_status: int | None, tokens: Any
    ) -> None:
        """Count one attempt; `tokens` is (prompt, completion, total), None where not reported."""
        key = (batch_id, started_at.replace(microsecond=0))
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0] * len(_SERIES)
        outcome = (
            0 if http_status is not None and 200 <= http_status < 300 else 1 if http_status == 429 else 2
        )
        row[outcome] += 1
        for k, value in enumerate(tokens):
            row[3 + k] += value or 0
        self.tally(batch_id, LATENCY, str(latency_bucket(latency_ms)))

    def tally(self, batch_id: str, kind: str, name: str, count: int = 1) -> None:
        key = (batch_id, kind, name)
        self.tallies[key] = self.tallies.get(key, 0) + count

    def write(self, s: Session, sqlite: bool) -> None:
        """Add everything counted to the tables, in `s`'s transaction."""
        series = [
            {"batch_id": b, "second": db_time_for(sqlite, t), **dict(zip(_SERIES, row, strict=True))}
            for (b, t), row in sorted(self.series.items())
        ]
        tallies = [
            _fit_tally({"batch_id": b, "kind": k, "name": n, "count": c})
            for (b, k, n), c in sorted(self.tallies.items())
        ]
        executemany(s, _ADD_SERIES, series)
        executemany(s, _ADD_TALLIES, tallies)


def add_outcomes(s: Session, sqlite: bool, outcomes: Sequence[Outcome]) -> None:
    """Count the outcomes' attempts, and the finish reasons of those that succeeded, in `s`'s transaction."""
    counts = Counts()
    for o in outcomes:
        if not o.batch_id:
            continue
        for a in o.attempts:
            tokens = (a.prompt_tokens, a.completion_tokens, a.total_tokens)
            counts.attempt(o.batch_id, a.started_at, a.latency_ms, a.http_status, tokens)
        if o.status == RequestStatus.SUCCEEDED and o.result is not None:
            counts.tally(o.batch_id, FINISH, o.result.get("finish_reasons") or "")
    counts.write(s, sqlite)


def rebuild(s: Session, sqlite: bool, batch_ids: Iterable[str]) -> None:
    """Count the batches' series and tallies again from their attempts and answers (e.g. rows made by bulk
    SQL, as the benchmarks make them)."""
    for batch_id in batch_ids:
        s.execute(delete(BatchSeries).where(BatchSeries.batch_id == batch_id))
        s.execute(delete(BatchTally).where(BatchTally.batch_id == batch_id))
        counts = Counts()
        attempts = s.execute(
            select(
                Attempt.started_at,
                Attempt.latency_ms,
                Attempt.http_status,
                Attempt.prompt_tokens,
                Attempt.completion_tokens,
                Attempt.total_tokens,
            )
            .join(Request, Request.id == Attempt.request_id)
            .where(Request.batch_id == batch_id)
            .execution_options(yield_per=10_000)
        )
        for started_at, latency, status, *tokens in attempts:
            counts.attempt(batch_id, started_at, latency, status, tokens)
        finished = s.execute(
            select(Result.finish_reasons)
            .join(Request, Request.id == Result.request_id)
            .where(Request.batch_id == batch_id, Request.status == RequestStatus.SUCCEEDED)
            .execution_options(yield_per=10_000)
        )
        for (reasons,) in finished:
            counts.tally(batch_id, FINISH, reasons or "")
        counts.write(s, sqlite)
