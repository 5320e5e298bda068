"""Small builders shared by the tests."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from pipeline.settings import Settings
from pipeline.store.db import open_database
from pipeline.store.models import Attempt, Request, Result
from tests.conftest import invoke


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **body},
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def chat_file(path: Path, n: int, prefix: str = "req") -> Path:
    return write_jsonl(path, [chat_line(f"{prefix}-{i}", f"{prefix} question {i}") for i in range(n)])


def db_rows(batch_id: str) -> dict[str, dict[str, Any]]:
    """custom_id -> the request row with its result, from the test's database."""
    db = open_database(Settings.load().db_url)
    with db.read() as s:
        rows = s.execute(
            select(Request, Result)
            .outerjoin(Result, Result.request_id == Request.id)
            .where(Request.batch_id == batch_id)
        ).all()
        return {req.custom_id: {"request": req, "result": res} for req, res in rows}


def attempt_count(batch_id: str, *, http_status: int | None = None) -> int:
    """The attempts recorded for a batch; with `http_status`, only those answered with it."""
    query = select(Attempt.id).join(Request).where(Request.batch_id == batch_id)
    if http_status is not None:
        query = query.where(Attempt.http_status == http_status)
    db = open_database(Settings.load().db_url)
    with db.read() as s:
        return len(s.scalars(query).all())


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def status_of(batch_id: str, *extra: str) -> dict[str, Any]:
    """`pipeline status BATCH --json [extra]`, parsed."""
    result: dict[str, Any] = orjson.loads(invoke("status", batch_id, "--json", *extra).stdout)
    return result


def batch_of(stdout: str) -> str:
    """The batch id a `run` or `submit` printed last."""
    return stdout.strip().splitlines()[-1]
