"""Every bad job-file case through `pipeline run`: the line is named, nothing is stored, nothing is sent."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings
from pipeline.store.db import open_database
from pipeline.store.models import Batch, Request
from tests.conftest import invoke
from tests.helpers import chat_line

GOOD = orjson.dumps(chat_line("good", "hello")) + b"\n"


def line(obj: object) -> bytes:
    return orjson.dumps(obj) + b"\n"


CASES = {
    "invalid json": (b'{"custom_id": "x",\n', 2, "invalid JSON"),
    "not an object": (b"[1, 2]\n", 2, "expected a JSON object, got array"),
    "non-utf8": (b'{"custom_id": "\xff"}\n', 2, "not valid UTF-8"),
    "missing url": (line({"custom_id": "a", "method": "POST", "body": {}}), 2, "url: required"),
    "unknown url": (
        line({**chat_line("a", "x"), "url": "/v1/images/generations"}),
        2,
        "url: unknown endpoint",
    ),
    "method not post": (line({**chat_line("a", "x"), "method": "GET"}), 2, "method: must be POST"),
    "missing model": (
        line({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}),
        2,
        "body.model: required",
    ),
    "messages missing": (
        line({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}),
        2,
        "body.messages: required",
    ),
    "messages not a list": (
        line({**chat_line("a", "x"), "body": {"model": "m", "messages": "hi"}}),
        2,
        "body.messages: must be a list",
    ),
    "message without role": (
        line({**chat_line("a", "x"), "body": {"model": "m", "messages": [{"content": "hi"}]}}),
        2,
        "body.messages[0].role: required",
    ),
    "missing prompt": (
        line({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m"}}),
        2,
        "body.prompt: required",
    ),
    "duplicate custom_id": (
        line(chat_line("good", "again")),
        2,
        "custom_id: duplicate 'good' (first on line 1)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_line_is_named_and_nothing_is_stored_or_sent(fake: FakeServer, tmp_path: Path, case: str) -> None:
    content, line_no, message = CASES[case]
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(GOOD + content + GOOD.replace(b'"good"', b'"good3"'))
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}:{line_no}: {message}" in result.stderr
    assert "nothing was stored or sent" in result.stderr
    assert_nothing_stored_or_sent(fake)


def test_empty_file(fake: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n  \n")
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}:2: empty file: no requests" in result.stderr
    assert_nothing_stored_or_sent(fake)


def test_every_bad_line_is_reported_then_a_count(fake: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_bytes(GOOD + b"oops\n" * 60)
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert result.stderr.count(": invalid JSON") == 50
    assert f"{path}:61: invalid JSON" not in result.stderr
    assert "... and 10 more invalid line(s)" in result.stderr
    assert_nothing_stored_or_sent(fake)


def test_blank_lines_and_a_bom_are_fine(fake: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD + b"\n\n   \n" + GOOD.replace(b'"good"', b'"good2"'))
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    assert fake.stats()["answered"] == 2


def test_no_api_key_is_a_clear_error(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(GOOD)
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == 1
    assert "no API key: set OPENAI_API_KEY" in result.stderr


def assert_nothing_stored_or_sent(fake: FakeServer) -> None:
    db = open_database(Settings.load().db_url)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 0
        assert s.scalar(select(func.count()).select_from(Request)) == 0
    assert fake.stats()["received"] == 0
