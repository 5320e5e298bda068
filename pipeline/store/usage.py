"""Per-batch counters: what the API charged each batch per model, and its failures per error type and HTTP
status, kept as attempts and outcomes are written.

`claims.record` adds the attempts and failures of every transaction it writes (`add_usage`,
`add_failures`: one executemany of upserts per transaction, never one per request), so `status` reads a
few rows instead of scanning every attempt or failed row of a million-request batch. Cost is not stored:
it is computed when read, from the price table in force. `retry` sends failed rows again: it rebuilds the
batch's failure counters from its rows (`rebuild_failures`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from pipeline.store.db import Database
from pipeline.store.models import BatchFailure, BatchUsage, Result
from pipeline.store.overview import DIRECT as DIRECT
from pipeline.store.overview import BatchTotals as BatchTotals
from pipeline.store.overview import Usage as Usage
from pipeline.store.overview import usage_of as usage_of
from pipeline.store.sql import db_time_for, executemany, fitter

_SUMMED = (
    "attempts",
    "charged",
    "rate_limited",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "total_tokens",
    "audio_seconds",
    "reasoning_tokens",
)
_ADD_USAGE = (
    "INSERT INTO batch_usage (batch_id, model, tier, "
    + ", ".join(_SUMMED)
    + ", first_sent_at) VALUES (:batch_id, :model, :tier, "
    + ", ".join(":" + c for c in _SUMMED)
    + ", :first_sent_at) ON CONFLICT (batch_id, model, tier) DO UPDATE SET "
    + ", ".join(f"{c} = batch_usage.{c} + excluded.{c}" for c in _SUMMED)
    + ", first_sent_at = CASE WHEN batch_usage.first_sent_at IS NULL"
    " OR excluded.first_sent_at < batch_usage.first_sent_at"
    " THEN excluded.first_sent_at ELSE batch_usage.first_sent_at END"
)
_fit = fitter(BatchUsage)
_ADD_FAILURES = (
    "INSERT INTO batch_failures (batch_id, error_type, http_status, count, sample)"
    " VALUES (:batch_id, :error_type, :http_status, :count, :sample)"
    " ON CONFLICT (batch_id, error_type, http_status)"
    " DO UPDATE SET count = batch_failures.count + excluded.count"
)
_fit_failure = fitter(BatchFailure)
#: The batch's failure counters, from its failed rows.
_REBUILD_FAILURES = (
    "INSERT INTO batch_failures (batch_id, error_type, http_status, count, sample)"
    " SELECT r.batch_id, coalesce(r.error_type, 'unknown'), coalesce(res.http_status, 0), count(*),"
    " max(r.error_message) FROM requests r LEFT JOIN results res ON res.request_id = r.id"
    " WHERE r.batch_id = :batch_id AND r.status = 'failed'"
    " GROUP BY r.batch_id, coalesce(r.error_type, 'unknown'), coalesce(res.http_status, 0)"
)


def add_usage(s: Session, sqlite: bool, usages: Iterable[tuple[str, Usage]]) -> None:
    """Add (batch id, counters) to the batches' counters, in `s`'s transaction."""
    rows: list[dict[str, Any]] = []
    for batch_id, u in usages:
        row = {name: getattr(u, name) for name in _SUMMED}
        row.update(batch_id=batch_id, model=u.model, tier=u.tier)
        row["first_sent_at"] = db_time_for(sqlite, u.first_sent_at)
        rows.append(_fit(row))
    # Sorted, so two transactions adding to the same counters lock them in one order (no deadlock).
    rows.sort(key=lambda r: (r["batch_id"], r["model"], r["tier"]))
    executemany(s, _ADD_USAGE, rows)


def completion_totals(db: Database) -> list[tuple[str, int, int]]:
    """(model, completion tokens, choices) over every stored 2xx answer that reported usage, per model as
    the answers name it: what an estimate learns average answer lengths from. One pass over `results`."""
    choices = (
        func.length(Result.finish_reasons) - func.length(func.replace(Result.finish_reasons, "|", "")) + 1
    )
    with db.read() as s:
        rows = s.execute(
            select(Result.model, func.sum(Result.completion_tokens), func.sum(choices))
            .where(
                Result.http_status.between(200, 299),
                Result.completion_tokens.is_not(None),
                Result.finish_reasons.is_not(None),
                Result.model.is_not(None),
            )
            .group_by(Result.model)
        ).all()
    return [(str(model), int(tokens or 0), int(n or 0)) for model, tokens, n in rows]


def add_failures(s: Session, failures: Iterable[tuple[str, str | None, int | None, str | None]]) -> None:
    """Count failed requests, given as (batch id, error type, final HTTP status, message), in `s`'s
    transaction."""
    counts: dict[tuple[str, str, int], dict[str, Any]] = {}
    for batch_id, error_type, http_status, message in failures:
        key = (batch_id, error_type or "unknown", http_status or 0)
        row = counts.get(key)
        if row is None:
            row = counts[key] = _fit_failure(
                {
                    "batch_id": key[0],
                    "error_type": key[1],
                    "http_status": key[2],
                    "count": 0,
                    "sample": message,
                }
            )
        row["count"] += 1
    executemany(s, _ADD_FAILURES, [counts[k] for k in sorted(counts)])


def rebuild_failures(s: Session, batch_id: str) -> None:
    """The batch's failure counters, counted again from its failed rows (after `retry` re-queued some)."""
    s.execute(delete(BatchFailure).where(BatchFailure.batch_id == batch_id))
    s.execute(text(_REBUILD_FAILURES), {"batch_id": batch_id})
