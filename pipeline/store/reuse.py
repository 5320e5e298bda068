"""Never pay twice for one answer: requests identical to ones already answered, found by their key.

A request's key (`request_key`, set at intake) is the sha256 of its endpoint, canonical body (keys
sorted), base URL, organization and audio clip: two requests with one key get the same answer from the
same API. `reuse_answers` answers a new batch's identical requests from the store in the intake's
transaction (succeeded, 0 attempts, `reused_from` naming the request whose answer was copied); without
--reuse, `identical` says how many there were and what their answers cost. One probe of the request-key
index per row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from pipeline.store.db import Database
from pipeline.store.models import Result
from pipeline.store.sql import columns

_SOURCE = (
    "SELECT s.id FROM requests s WHERE s.request_key = r.request_key AND s.status = 'succeeded'"
    " AND s.batch_id <> :batch_id ORDER BY s.id LIMIT 1"
)
_REUSE = text(
    "UPDATE requests SET status = 'succeeded', finished_at = :now,"
    f" reused_from = ({_SOURCE.replace('r.request_key', 'requests.request_key')})"
    " WHERE batch_id = :batch_id AND status = 'queued' AND request_key IS NOT NULL"
    f" AND EXISTS ({_SOURCE.replace('r.request_key', 'requests.request_key')})"
)
_RESULT_COLUMNS = [c for c in columns(Result) if c != "request_id"]
_COPY_RESULTS = text(
    f"INSERT INTO results (request_id, {', '.join(_RESULT_COLUMNS)})"
    f" SELECT r.id, {', '.join('src.' + c for c in _RESULT_COLUMNS)}"
    " FROM requests r JOIN results src ON src.request_id = r.reused_from"
    " WHERE r.batch_id = :batch_id AND r.reused_from IS NOT NULL"
)
_IDENTICAL = text(
    "SELECT src.model, count(*), coalesce(sum(src.prompt_tokens), 0),"
    " coalesce(sum(src.completion_tokens), 0),"
    " coalesce(sum(src.audio_seconds), 0) FROM requests r"
    f" JOIN results src ON src.request_id = ({_SOURCE})"
    " WHERE r.batch_id = :batch_id AND r.status = 'queued' AND r.request_key IS NOT NULL"
    " GROUP BY src.model"
)


def request_key(
    url: str, body: dict[str, Any], base_url: str, organization: str | None, blob: str | None
) -> str:
    """The key of a request: equal keys mean the same request to the same API."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(f"{url}\n{base_url}\n{organization or ''}\n{blob or ''}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def reuse_answers(s: Session, batch_id: str, now: Any) -> int:
    """Answer the batch's queued requests identical to a succeeded one of another batch, in `s`'s
    transaction: their answer is copied, nothing is sent. Returns how many."""
    done = s.execute(_REUSE, {"batch_id": batch_id, "now": now})
    reused = int(getattr(done, "rowcount", 0) or 0)
    if reused:
        s.execute(_COPY_RESULTS, {"batch_id": batch_id})
    return reused


def identical(db: Database, batch_id: str) -> list[tuple[str | None, int, int, int, float]]:
    """Per model of the stored answers: (model, requests of the batch identical to an answered one,
    their answers' prompt tokens, completion tokens, audio seconds)."""
    with db.read() as s:
        rows = s.execute(_IDENTICAL, {"batch_id": batch_id}).all()
    return [(model, int(n), int(p), int(c), float(a)) for model, n, p, c, a in rows]
