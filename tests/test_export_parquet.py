"""`export --format parquet` of 100,000 rows, read back with pyarrow: field by field the `jsonl` export."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert

from pipeline.endpoints import BY_URL, vectors
from pipeline.export import export_batch
from pipeline.store.db import open_database
from pipeline.store.models import Attempt, Batch, Request, Result

pq = pytest.importorskip("pyarrow.parquet")

ROWS = 100_000
T0 = datetime(2026, 11, 1, 12, 0, 0)
SRT = '1\n00:00:00,000 --> 00:00:01,500\nHéllo, "there".\n'


def _rows(i: int) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """A request of one of nine kinds: chat answers (two choices, unicode), an error answer, a timeout,
    a transcript as text, queued and cancelled rows, embeddings (vectors stored apart), a moderation."""
    kind = i % 9
    req: dict[str, Any] = {
        "id": i + 1, "batch_id": "pq", "line": i + 1, "custom_id": f"row-{i}", "url": "/v1/chat/completions",
        "body": orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"q{i} ✓"}]}).decode(),
        "status": "succeeded", "attempts": 1, "created_at": T0, "finished_at": T0 + timedelta(microseconds=i),
    }  # fmt: skip
    result: dict[str, Any] | None = None
    if kind in (0, 1):
        body = {"id": f"c{i}", "choices": [{"message": {"content": f"a{i} ✓"}, "finish_reason": "stop"}]}
        result = {"http_status": 200, "x_request_id": f"req_{i}", "content_type": "application/json",
                  "body": orjson.dumps(body).decode(), "model": "gpt-4o-mini-2024-07-18",
                  "finish_reasons": "stop|length" if kind else "stop", "output": f"a{i} ✓",
                  "prompt_tokens": 9, "completion_tokens": i % 50, "total_tokens": 9 + i % 50}  # fmt: skip
    elif kind == 2:
        req.update(status="failed", error_type="invalid_request_error", error_message="bad 'temperature'")
        result = {
            "http_status": 400,
            "content_type": "application/json",
            "body": '{"error": {"message": "x"}}',
        }
    elif kind == 3:
        req.update(status="failed", attempts=3, error_type="timeout", error_message="read timed out")
    elif kind == 4:
        req["url"] = "/v1/audio/transcriptions"
        result = {"http_status": 200, "content_type": "text/plain; charset=utf-8", "body": SRT, "output": SRT,
                  "audio_seconds": 1.5}  # fmt: skip
    elif kind == 5:
        req.update(status="queued", attempts=0, finished_at=None)
    elif kind == 7:
        req["url"] = "/v1/embeddings"
        data = [{"object": "embedding", "index": k, "embedding": ""} for k in range(2)]  # base64, emptied
        stored = vectors.pack([i / 7, -1.5, 1e-8] * 2)  # two vectors of 3
        result = {"http_status": 200, "content_type": "application/json", "model": "text-embedding-3-small",
                  "body": orjson.dumps({"object": "list", "data": data}).decode(), "prompt_tokens": 4,
                  "total_tokens": 4, "dimensions": 3, "vectors": stored}  # fmt: skip
    elif kind == 8:
        req["url"] = "/v1/moderations"
        body = {"id": f"modr-{i}", "results": [{"flagged": bool(i % 2), "categories": {}}]}
        result = {"http_status": 200, "content_type": "application/json", "body": orjson.dumps(body).decode(),
                  "flagged": bool(i % 2), "output": "violence" if i % 2 else None}  # fmt: skip
    else:
        req.update(status="cancelled", attempts=0, error_type="cancelled", error_message="cancelled")
    attempts = [
        {"request_id": i + 1, "number": n, "started_at": T0, "latency_ms": 100.0 + i % 997 + n / 3}
        for n in range(1, req["attempts"] + 1)
    ]
    return req, ({"request_id": i + 1, **result} if result else None), attempts


def _build(url: str) -> None:
    db = open_database(url)
    with db.write() as s:
        s.add(
            Batch(id="pq", source="pq.jsonl", content_hash="0" * 64, base_url="http://x", key_fingerprint="k")
        )
    for start in range(0, ROWS, 10_000):
        reqs, results, attempts = [], [], []
        for i in range(start, start + 10_000):
            req, result, atts = _rows(i)
            reqs.append(req)
            attempts.extend(atts)
            if result:
                results.append(result)
        with db.write() as s:
            s.execute(insert(Request), reqs)
            s.execute(insert(Result), results)
            s.execute(insert(Attempt), attempts)


def _stored(embeddings: list[list[float]] | None) -> bytes | None:
    """The Parquet column's vectors as the database stores them (float32 little-endian)."""
    return b"".join(vectors.pack(v) for v in embeddings) if embeddings is not None else None


def _as_jsonl(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row in the shape of the jsonl export's record."""
    body, ctype = row["response"], row["content_type"]
    parsed = orjson.loads(body) if body is not None and (ctype is None or "json" in ctype) else body
    tokens = (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"])
    if any(t is not None for t in tokens):
        usage: Any = dict(zip(("prompt_tokens", "completion_tokens", "total_tokens"), tokens, strict=True))
    else:
        usage = (
            None if row["audio_seconds"] is None else {"type": "duration", "seconds": row["audio_seconds"]}
        )
    error = None
    if row["error_type"] is not None or row["error_message"] is not None:
        error = {"type": row["error_type"], "message": row["error_message"]}
    response = None
    if row["http_status"] is not None:
        endpoint = BY_URL[row["endpoint"]]
        restored = endpoint.restore(parsed, _stored(row["embeddings"]), row["dimensions"])
        response = {"status_code": row["http_status"], "request_id": row["x_request_id"], "body": restored}
    extra: dict[str, Any] = {}
    if row["endpoint"] == "/v1/embeddings":
        extra["embeddings"] = row["embeddings"]
    if row["endpoint"] == "/v1/moderations":
        extra["flagged"] = row["flagged"]
    return extra | {
        "custom_id": row["custom_id"], "status": row["status"], "endpoint": row["endpoint"],
        "attempts": row["attempts"], "request": orjson.loads(row["request"]), "response": response,
        "usage": usage, "finish_reasons": row["finish_reasons"], "output": row["output"], "error": error,
        "latency_ms": row["latency_ms"],
    }  # fmt: skip


def test_parquet_of_100000_rows_equals_the_jsonl_export(database_url: str, tmp_path: Path) -> None:
    _build(database_url)
    db = open_database(database_url)
    with open(tmp_path / "out.parquet", "wb") as out:
        assert export_batch(db, "pq", "parquet", out) == ROWS
    with open(tmp_path / "out.jsonl", "wb") as out:
        export_batch(db, "pq", "jsonl", out)
    parquet = pq.ParquetFile(tmp_path / "out.parquet")
    assert parquet.metadata.num_row_groups == 5  # written 20,000 rows at a time
    schema = parquet.schema_arrow
    assert str(schema.field("attempts").type) == "int32" and str(schema.field("latency_ms").type) == "double"
    assert str(schema.field("finished_at").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("finish_reasons").type) == "list<element: string>"
    assert str(schema.field("embeddings").type) == "list<element: list<element: float>>"
    table = parquet.read()
    jsonl = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(jsonl) == table.num_rows == ROWS
    for k, (line, row) in enumerate(zip(jsonl, table.to_pylist(), strict=True)):
        assert _as_jsonl(row) == orjson.loads(line), k
        expected_finish = None if row["status"] == "queued" else T0 + timedelta(microseconds=k)
        assert (row["finished_at"] and row["finished_at"].replace(tzinfo=None)) == expected_finish
