"""The row browser's queries: a page of a batch's requests, filtered, by keyset; and one request whole.

Pages are keyed on `requests.id` (`after`: the last id of the previous page), never OFFSET: the next page
of a million-row batch costs what the first does. A filter the (batch_id, status) index answers (status,
error type) walks that index. A filter it does not (finish reason, model, a search of custom ids and
output text) reads at most `SCAN_ROWS` requests of the batch past `after` per page: a rare match cannot
make one page read the whole batch. A page that stopped at that bound says so (`scanned_to`), and the next
page goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from pipeline.report import iso
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Request, RequestStatus, Result

#: Rows per page of the row browser.
PAGE_ROWS = 50
#: Requests a page filtered by what no index holds reads at most, past its cursor.
SCAN_ROWS = 20_000
#: Characters of the answer shown per row in a page (the row's own page shows it whole).
PREVIEW_CHARS = 160


@dataclass(frozen=True)
class RowFilter:
    """What the row browser shows: every field optional; `search` looks in custom ids and output text."""

    status: str | None = None
    error_type: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    search: str | None = None

    @classmethod
    def from_query(cls, query: dict[str, str]) -> RowFilter:
        """From a URL's query (empty values are no filter)."""

        def get(name: str) -> str | None:
            value = query.get(name, "").strip()
            return value or None

        return cls(get("status"), get("error_type"), get("finish_reason"), get("model"), get("search"))

    @property
    def scans(self) -> bool:
        """Whether the filter needs rows no index picks out (so a page's reading is bounded)."""
        return bool(self.finish_reason or self.model or self.search)


def rows_page(
    db: Database, batch_id: str, filt: RowFilter, after: int = 0, limit: int = PAGE_ROWS
) -> dict[str, Any]:
    """One page of the batch's requests matching `filt`, with ids above `after`, in id order.

    `next` is the cursor of the next page (None at the end); `scanned_to` is set when the page stopped at
    the scan bound before filling up.
    """
    limit = max(1, min(limit, 500))
    with db.read() as s:
        bound = None
        if filt.scans:
            bound = s.scalar(
                select(Request.id)
                .where(Request.batch_id == batch_id, Request.id > after)
                .order_by(Request.id)
                .offset(SCAN_ROWS - 1)
                .limit(1)
            )
        stmt = _page_statement(db, batch_id, filt, after, bound).limit(limit + 1)
        rows = s.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_row_item(row) for row in rows]
    if more:
        next_after: int | None = rows[-1][0]
    else:
        next_after = bound  # None: the scan reached the end of the batch
    return {
        "batch": batch_id,
        "rows": items,
        "next": next_after,
        "scanned_to": bound if not more and bound is not None else None,
        "filter": {k: v for k, v in vars(filt).items() if v},
    }


def _page_statement(
    db: Database, batch_id: str, filt: RowFilter, after: int, bound: int | None
) -> Select[Any]:
    stmt = (
        select(
            Request.id,
            Request.line,
            Request.custom_id,
            Request.status,
            Request.attempts,
            Request.error_type,
            Result.http_status,
            Result.finish_reasons,
            Result.model,
            func.substr(Result.output, 1, PREVIEW_CHARS),
        )
        .select_from(Request)
        .outerjoin(Result, Result.request_id == Request.id)
        .where(Request.batch_id == batch_id, Request.id > after)
        .order_by(Request.id)
    )
    if bound is not None:
        stmt = stmt.where(Request.id <= bound)
    for condition in _conditions(db, filt):
        stmt = stmt.where(condition)
    return stmt


def _conditions(db: Database, filt: RowFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filt.status:
        conditions.append(Request.status == filt.status)
    if filt.error_type:
        # Only final rows carry an error type: the status index narrows the walk to them.
        if not filt.status:
            conditions.append(Request.status.in_([RequestStatus.FAILED, RequestStatus.CANCELLED]))
        conditions.append(Request.error_type == filt.error_type)
    if filt.finish_reason:
        reason = filt.finish_reason
        conditions.append(
            or_(
                Result.finish_reasons == reason,
                Result.finish_reasons.startswith(reason + "|", autoescape=True),
                Result.finish_reasons.contains("|" + reason, autoescape=True),
            )
        )
    if filt.model:
        conditions.append(or_(_body_model(db) == filt.model, Result.model == filt.model))
    if filt.search:
        conditions.append(
            or_(
                Request.custom_id.contains(filt.search, autoescape=True),
                and_(Result.output.is_not(None), Result.output.contains(filt.search, autoescape=True)),
            )
        )
    return conditions


def _body_model(db: Database) -> ColumnElement[Any]:
    """The `model` the request body names, read by the database's own JSON functions."""
    if db.is_sqlite:
        return func.json_extract(Request.body, "$.model")
    return func.json_extract_path_text(func.cast(Request.body, _json_type()), "model")


def _json_type() -> Any:
    from sqlalchemy.dialects.postgresql import JSON

    return JSON()


def _row_item(row: Any) -> dict[str, Any]:
    rid, line, custom_id, status, attempts, error_type, http_status, finish, model, preview = row
    return {
        "id": rid,
        "line": line,
        "custom_id": custom_id,
        "status": str(status),
        "attempts": attempts,
        "error_type": error_type,
        "http_status": http_status,
        "finish_reasons": finish.split("|") if finish else [],
        "model": model,
        "output": preview,
    }


def row_detail(db: Database, batch_id: str, request_id: int) -> dict[str, Any] | None:
    """One request of the batch: the request, its answer and every attempt; None when it is not there."""
    with db.read() as s:
        found = s.execute(
            select(Request, Result)
            .outerjoin(Result, Result.request_id == Request.id)
            .where(Request.id == request_id, Request.batch_id == batch_id)
        ).first()
        if found is None:
            return None
        request, result = found
        attempts = s.scalars(
            select(Attempt).where(Attempt.request_id == request_id).order_by(Attempt.number, Attempt.id)
        ).all()
    return {
        "batch": batch_id,
        "id": request.id,
        "line": request.line,
        "custom_id": request.custom_id,
        "status": str(request.status),
        "endpoint": request.url,
        "attempts_count": request.attempts,
        "error": {"type": request.error_type, "message": request.error_message}
        if request.error_type or request.error_message
        else None,
        "created_at": iso(request.created_at),
        "finished_at": iso(request.finished_at),
        "request": _json_or_text(request.body),
        "response": _result(result),
        "attempts": [_attempt(a) for a in attempts],
    }


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _result(result: Result | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "http_status": result.http_status,
        "x_request_id": result.x_request_id,
        "model": result.model,
        "finish_reasons": result.finish_reasons.split("|") if result.finish_reasons else [],
        "output": result.output,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
            "audio_seconds": result.audio_seconds,
        },
        "body": _json_or_text(result.body),
    }


def _attempt(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": iso(a.started_at),
        "latency_ms": round(a.latency_ms, 1),
        "http_status": a.http_status,
        "error_type": a.error_type,
        "error_message": a.error_message,
        "x_request_id": a.x_request_id,
        "via": a.via.value if a.via else None,
        "tokens": {"prompt": a.prompt_tokens, "completion": a.completion_tokens, "total": a.total_tokens},
    }
