"""`export_batch` in its three formats, over one batch holding a request in every state that matters."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import export
from pipeline.errors import BatchNotFound, ConfigError
from pipeline.export import CSV_COLUMNS, FORMATS, export_batch
from pipeline.ids import openai_request_id as openai_id
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Batch, Request, Result

T0 = datetime(2026, 11, 1, 12, 0, 0)

CHAT_BODY = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}'
# Commas, quotes, a CRLF and a LF: the CSV must carry them unchanged.
CHAT_OUTPUT = 'Hello, "world"!\r\nSecond line, with a comma\nthird'
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": CHAT_OUTPUT}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"},
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}
SRT_BODY = '{"model": "whisper-1", "file": "clip.wav", "response_format": "srt"}'
SRT = "1\n00:00:00,000 --> 00:00:01,500\nHello, there.\n\n2\n00:00:01,500 --> 00:00:02,000\nBye.\n"
BAD_BODY = '{"model": "gpt-4o-mini", "messages": [], "temperature": 9}'
ERROR_RESPONSE = {
    "error": {
        "message": "Invalid value for 'temperature'",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
}


def _request(id: int, custom_id: str, status: str, attempts: int, **kw: Any) -> Request:
    kw.setdefault("url", "/v1/chat/completions")
    kw.setdefault("body", CHAT_BODY)
    return Request(id=id, batch_id="b1", line=id, custom_id=custom_id, status=status, attempts=attempts, **kw)


def _attempts(request_id: int, latencies: dict[int, float]) -> list[Attempt]:
    return [
        Attempt(request_id=request_id, number=n, started_at=T0, latency_ms=ms) for n, ms in latencies.items()
    ]


def _requests() -> list[Request]:
    return [
        _request(11, "chat", "succeeded", 2),
        _request(12, "srt", "succeeded", 1, url="/v1/audio/transcriptions", body=SRT_BODY),
        _request(13, "bad", "failed", 1, body=BAD_BODY, error_type="invalid_request_error",
                 error_message="Invalid value for 'temperature'"),
        _request(14, "slow", "failed", 3, error_type="timeout", error_message="read timed out after 60 s"),
        _request(15, "cancelled", "cancelled", 0),
        _request(16, "queued", "queued", 0),
        _request(17, "running", "running", 1),
        Request(id=18, batch_id="b2", line=1, custom_id="other", url="/v1/chat/completions", body="{}"),
    ]  # fmt: skip


def _results() -> list[Result]:
    chat = orjson.dumps(CHAT_RESPONSE, option=orjson.OPT_INDENT_2).decode()  # stored as received
    return [
        Result(request_id=11, http_status=200, x_request_id="req_chat",
               content_type="application/json; charset=utf-8", body=chat, response_id="chatcmpl-1",
               model="gpt-4o-mini-2024-07-18", finish_reasons="stop|length", output=CHAT_OUTPUT,
               prompt_tokens=9, completion_tokens=12, total_tokens=21),
        Result(request_id=12, http_status=200, x_request_id="req_srt",
               content_type="text/plain; charset=utf-8", body=SRT, model="whisper-1", output=SRT),
        Result(request_id=13, http_status=400, x_request_id="req_bad", content_type="application/json",
               body=orjson.dumps(ERROR_RESPONSE).decode()),
    ]  # fmt: skip


def _fill(db: Database) -> None:
    with db.write() as s:
        s.add_all(
            Batch(id=b, source=f"{b}.jsonl", content_hash="0" * 64, base_url="http://x", key_fingerprint="k")
            for b in ("b1", "b2", "empty")
        )
        s.flush()
        s.add_all(_requests())
        s.flush()
        # Attempt rows go in out of order (3 before 1): "last" means the highest number, not the newest row.
        s.add_all([
            *_attempts(11, {1: 1500.04, 2: 812.345}),
            *_attempts(12, {1: 2000.06}),
            *_attempts(13, {1: 95.44}),
            *_attempts(14, {3: 60001.27, 1: 60000.0, 2: 59999.9}),
            *_attempts(17, {1: 10.0}),
        ])  # fmt: skip
        s.add_all(_results())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    _fill(database)
    yield database
    database.engine.dispose()


def run(db: Database, fmt: str, batch_id: str = "b1") -> tuple[int, bytes]:
    out = io.BytesIO()
    count = export_batch(db, batch_id, fmt, out)
    assert not out.closed  # the caller's stream stays open
    return count, out.getvalue()


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


# --- csv -----------------------------------------------------------------------------------------------

EMPTY = dict.fromkeys(CSV_COLUMNS, "")
EXPECTED_CSV = [
    {
        **EMPTY,
        "custom_id": "chat",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "succeeded",
        "http_status": "200",
        "finish_reason": "stop|length",
        "prompt_tokens": "9",
        "completion_tokens": "12",
        "total_tokens": "21",
        "output": CHAT_OUTPUT,
        "attempts": "2",
        "latency_ms": "812.3",
    },
    {
        **EMPTY,
        "custom_id": "srt",
        "endpoint": "/v1/audio/transcriptions",
        "model": "whisper-1",
        "status": "succeeded",
        "http_status": "200",
        "output": SRT,
        "attempts": "1",
        "latency_ms": "2000.1",
    },
    {
        **EMPTY,
        "custom_id": "bad",
        "endpoint": "/v1/chat/completions",
        "status": "failed",
        "http_status": "400",
        "error_type": "invalid_request_error",
        "error_message": "Invalid value for 'temperature'",
        "attempts": "1",
        "latency_ms": "95.4",
    },
    {
        **EMPTY,
        "custom_id": "slow",
        "endpoint": "/v1/chat/completions",
        "status": "failed",
        "error_type": "timeout",
        "error_message": "read timed out after 60 s",
        "attempts": "3",
        "latency_ms": "60001.3",
    },
    {
        **EMPTY,
        "custom_id": "cancelled",
        "endpoint": "/v1/chat/completions",
        "status": "cancelled",
        "attempts": "0",
    },
    {**EMPTY, "custom_id": "queued", "endpoint": "/v1/chat/completions", "status": "queued", "attempts": "0"},
    {
        **EMPTY,
        "custom_id": "running",
        "endpoint": "/v1/chat/completions",
        "status": "running",
        "attempts": "1",
        "latency_ms": "10.0",
    },
]


def test_csv_has_every_column_of_every_request_in_id_order(db: Database) -> None:
    count, data = run(db, "csv")
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    rows = list(reader)
    assert reader.fieldnames == list(CSV_COLUMNS)
    assert rows == EXPECTED_CSV
    assert count == len(rows) == 7


def test_csv_quotes_commas_quotes_and_newlines_per_rfc_4180(db: Database) -> None:
    _, data = run(db, "csv")
    assert data.startswith(b"custom_id,endpoint,model,")
    assert b'"Hello, ""world""!\r\nSecond line, with a comma\nthird"' in data
    assert data.endswith(b"\r\n")
    assert next(csv.reader(io.StringIO(data.decode(), newline=""), strict=True)) == list(CSV_COLUMNS)


def test_csv_of_an_empty_batch_is_the_header_alone(db: Database) -> None:
    assert run(db, "csv", "empty") == (0, b",".join(c.encode() for c in CSV_COLUMNS) + b"\r\n")


# --- jsonl ---------------------------------------------------------------------------------------------


def test_jsonl_has_one_object_per_request_with_parsed_bodies(db: Database) -> None:
    count, data = run(db, "jsonl")
    records = jsonl(data)
    assert count == len(records) == 7
    assert [r["custom_id"] for r in records] == [r["custom_id"] for r in EXPECTED_CSV]
    chat, srt, bad, slow, cancelled, queued, running = records
    assert chat == {
        "custom_id": "chat",
        "status": "succeeded",
        "endpoint": "/v1/chat/completions",
        "attempts": 2,
        "request": orjson.loads(CHAT_BODY),
        "response": {"status_code": 200, "request_id": "req_chat", "body": CHAT_RESPONSE},
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        "finish_reasons": ["stop", "length"],
        "output": CHAT_OUTPUT,
        "error": None,
        "latency_ms": 812.3,
    }
    assert srt == {
        "custom_id": "srt",
        "status": "succeeded",
        "endpoint": "/v1/audio/transcriptions",
        "attempts": 1,
        "request": orjson.loads(SRT_BODY),
        "response": {"status_code": 200, "request_id": "req_srt", "body": SRT},  # text stays text
        "usage": None,
        "finish_reasons": [],
        "output": SRT,
        "error": None,
        "latency_ms": 2000.1,
    }
    assert bad == {
        "custom_id": "bad",
        "status": "failed",
        "endpoint": "/v1/chat/completions",
        "attempts": 1,
        "request": orjson.loads(BAD_BODY),
        "response": {"status_code": 400, "request_id": "req_bad", "body": ERROR_RESPONSE},
        "usage": None,
        "finish_reasons": [],
        "output": None,
        "error": {"type": "invalid_request_error", "message": "Invalid value for 'temperature'"},
        "latency_ms": 95.4,
    }
    no_answer = {
        "endpoint": "/v1/chat/completions",
        "request": orjson.loads(CHAT_BODY),
        "response": None,
        "usage": None,
        "finish_reasons": [],
        "output": None,
    }
    assert slow == {
        **no_answer,
        "custom_id": "slow",
        "status": "failed",
        "attempts": 3,
        "error": {"type": "timeout", "message": "read timed out after 60 s"},
        "latency_ms": 60001.3,
    }
    assert cancelled == {
        **no_answer,
        "custom_id": "cancelled",
        "status": "cancelled",
        "attempts": 0,
        "error": None,
        "latency_ms": None,
    }
    assert queued == {
        **no_answer,
        "custom_id": "queued",
        "status": "queued",
        "attempts": 0,
        "error": None,
        "latency_ms": None,
    }
    assert running == {
        **no_answer,
        "custom_id": "running",
        "status": "running",
        "attempts": 1,
        "error": None,
        "latency_ms": 10.0,
    }


def test_jsonl_keeps_bodies_that_are_not_json_as_text(db: Database) -> None:
    with db.write() as s:
        s.add(Request(id=21, batch_id="b2", line=2, custom_id="odd", url="/v1/x", body="not json"))
        s.flush()
        # A text transcript that happens to parse as JSON stays text; a broken JSON body falls back to text.
        s.add(Result(request_id=18, http_status=200, content_type="text/plain", body="42"))
        s.add(
            Result(request_id=21, http_status=502, content_type="application/json", body="<html>bad gateway")
        )
    _, data = run(db, "jsonl", "b2")
    other, odd = jsonl(data)
    assert other["request"] == {}
    assert other["response"] == {"status_code": 200, "request_id": None, "body": "42"}
    assert odd["request"] == "not json"
    assert odd["response"] == {"status_code": 502, "request_id": None, "body": "<html>bad gateway"}


# --- openai --------------------------------------------------------------------------------------------


def test_openai_lines_are_batch_api_output_lines_for_final_requests(db: Database) -> None:
    count, data = run(db, "openai")
    lines = jsonl(data)
    assert count == len(lines) == 5  # queued and running are left out
    assert all(set(line) == {"id", "custom_id", "response", "error"} for line in lines)
    assert [line["custom_id"] for line in lines] == ["chat", "srt", "bad", "slow", "cancelled"]
    assert [line["id"] for line in lines] == [openai_id(n) for n in (11, 12, 13, 14, 15)]
    assert all(line["id"].startswith("batch_req_") for line in lines)
    assert len({line["id"] for line in lines}) == 5
    chat, srt, bad, slow, cancelled = lines
    assert chat["response"] == {"status_code": 200, "request_id": "req_chat", "body": CHAT_RESPONSE}
    assert srt["response"] == {"status_code": 200, "request_id": "req_srt", "body": SRT}
    # An HTTP error is still a response, as the Batch API reports it: the error is in the body.
    assert bad["response"] == {"status_code": 400, "request_id": "req_bad", "body": ERROR_RESPONSE}
    assert chat["error"] is srt["error"] is bad["error"] is None
    assert slow["response"] is None
    assert slow["error"] == {"code": "timeout", "message": "read timed out after 60 s"}
    assert cancelled["response"] is None
    assert cancelled["error"]["code"] == "cancelled"
    assert cancelled["error"]["message"]


def test_openai_ids_are_stable_across_exports(db: Database) -> None:
    assert run(db, "openai") == run(db, "openai")


# --- common --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_small_fetch_batches_give_the_same_output(
    db: Database, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = run(db, fmt)
    monkeypatch.setattr(export, "YIELD_PER", 2)
    assert run(db, fmt) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_only_the_batch_s_requests_are_exported(db: Database, fmt: str) -> None:
    _, data = run(db, fmt)
    assert b'"other"' not in data and b"other," not in data
    assert run(db, fmt, "empty")[0] == 0


def test_unknown_format_and_unknown_batch_are_errors(db: Database) -> None:
    with pytest.raises(ConfigError, match="xml"):
        run(db, "xml")
    with pytest.raises(BatchNotFound, match="nope"):
        run(db, "csv", "nope")


def test_postgres_exports_what_sqlite_does(db: Database, postgres_url: str) -> None:
    pg = Database(postgres_url)
    pg.upgrade()
    _fill(pg)
    try:
        # Parquet holds each row's created_at (set at insert, so the two fills differ): its own test
        # compares it field by field with jsonl on both databases.
        for fmt in (f for f in FORMATS if f != "parquet"):
            assert run(pg, fmt) == run(db, fmt), fmt
    finally:
        pg.engine.dispose()
