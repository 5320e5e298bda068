"""The API key never appears in the database, exports, logs, output, exceptions or reprs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from pipeline.cli import EXIT_PAUSED
from pipeline.errors import APIError
from pipeline.fakeapi import FakeServer
from pipeline.ratelimit.local import LocalLimiter
from pipeline.send.engine import Engine
from pipeline.settings import Settings
from pipeline.store.db import open_database
from tests.conftest import TEST_KEY, invoke
from tests.helpers import chat_file, chat_line, write_jsonl


def test_the_key_leaks_nowhere(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.config.error_rate = 0.2
    outputs: list[str] = []
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(30)]
    lines.append(chat_line("bad", 'fake:{"status": 400, "code": "invalid_value"}'))
    result = invoke("run", str(write_jsonl(tmp_path / "a.jsonl", lines)), "--base-url", fake.url)
    outputs += [result.stdout, result.stderr]
    # A wrong key: the API answers 401 with (a masked form of) the key in its message; the batch pauses and
    # the answer is stored with the attempt.
    wrong_key = TEST_KEY.replace("SECRET", "WRONGKEY")
    monkeypatch.setenv("OPENAI_API_KEY", wrong_key)
    result = invoke("run", str(chat_file(tmp_path / "b.jsonl", 3, "b")), "--base-url", fake.url)
    assert result.exit_code == EXIT_PAUSED
    outputs += [result.stdout, result.stderr]
    for fmt in ("csv", "jsonl", "openai"):
        outputs.append(invoke("export", "--format", fmt).stdout)
    outputs.append(invoke("status", "--json").stdout)
    outputs.append(invoke("status").stdout)

    settings = Settings.load()
    outputs += [
        repr(settings),
        str(settings),
        repr(settings.api_key),
        repr(Engine(settings, open_database(settings.db_url), LocalLimiter())),
    ]
    outputs += [record.getMessage() + str(record.exc_info) for record in caplog.records]
    outputs.append(_dump_database(settings))
    outputs.append(
        b"".join(p.read_bytes() for p in Path(settings.data_dir).rglob("*") if p.is_file()).decode("latin-1")
    )

    for key in (TEST_KEY, wrong_key):
        for text in outputs:
            assert key not in text
            assert key[8:] not in text  # nor most of it
    assert "401" in outputs[-2] or "invalid_api_key" in outputs[-2], "the 401 answers were not stored at all"


def test_api_errors_do_not_carry_request_headers() -> None:
    error = APIError("HTTP 401: Incorrect API key provided: sk-tes****1e1e.", status=401)
    assert TEST_KEY not in str(error) and TEST_KEY not in repr(error)


def _dump_database(settings: Settings) -> str:
    db = open_database(settings.db_url)
    meta = MetaData()
    meta.reflect(db.engine)
    chunks: list[str] = []
    with db.read() as s:
        for table in meta.sorted_tables:
            chunks.extend(repr(tuple(row)) for row in s.execute(select(table)))
    return "\n".join(chunks)
