"""The Python API (`pipeline.run`, `arun`) and the project header, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings
from tests.conftest import invoke
from tests.helpers import chat_file, chat_line


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


# --- the Python API ------------------------------------------------------------------------------------


def test_run_from_python_twice_sends_once(fake: FakeServer, tmp_path: Path) -> None:
    rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(20)]
    results = pipeline.run(rows, endpoint="chat", base_url=fake.url)
    assert [r["custom_id"] for r in results] == [f"line-{i + 1}" for i in range(20)]
    assert all(r["status"] == "succeeded" and r["output"] == f"echo: q{i}" for i, r in enumerate(results))
    assert results[0]["usage"]["total_tokens"] > 0
    again = pipeline.run(rows, endpoint="chat", base_url=fake.url)
    assert again == results
    assert fake.stats()["received"] == 20


def test_run_from_python_takes_batch_lines_or_a_path(fake: FakeServer, tmp_path: Path) -> None:
    lines = [chat_line(f"id-{i}", f"hello {i}") for i in range(5)]
    assert [r["custom_id"] for r in pipeline.run(lines, base_url=fake.url)] == [f"id-{i}" for i in range(5)]
    path = chat_file(tmp_path / "jobs.jsonl", 3)
    assert len(pipeline.run(path, base_url=fake.url)) == 3


def test_run_inside_a_running_event_loop_and_from_a_thread(fake: FakeServer, tmp_path: Path) -> None:
    rows = [chat_line(f"nb-{i}", f"notebook {i}") for i in range(5)]

    async def notebook_cell() -> list[dict[str, Any]]:
        return pipeline.run(rows, base_url=fake.url)  # blocking call from inside a loop, as in Jupyter

    assert len(asyncio.run(notebook_cell())) == 5
    assert len(asyncio.run(pipeline.arun(rows, base_url=fake.url))) == 5  # the same batch: nothing sent

    found: list[Any] = []
    thread_rows = [chat_line(f"th-{i}", f"thread {i}") for i in range(5)]
    thread = threading.Thread(target=lambda: found.append(pipeline.run(thread_rows, base_url=fake.url)))
    thread.start()
    thread.join(timeout=60)
    assert len(found[0]) == 5 and all(r["status"] == "succeeded" for r in found[0])
    assert fake.stats()["received"] == 10


def test_invalid_rows_from_python_raise_with_their_line_numbers(fake: FakeServer) -> None:
    with pytest.raises(pipeline.JobFileError) as info:
        pipeline.run([{"model": "m"}], endpoint="chat", base_url=fake.url)
    assert "body.messages: required" in str(info.value.errors[0])
    assert fake.stats()["received"] == 0


# --- the project header --------------------------------------------------------------------------------


def test_the_project_is_sent_as_openai_project_and_splits_the_limit_key(
    fake: FakeServer, tmp_path: Path
) -> None:
    from pipeline.send.estimates import Estimator
    from pipeline.store.claims import Claimed

    settings = Settings.load({"project": "proj_123", "base_url": fake.url})
    row = Claimed(1, "b", "c", "/v1/chat/completions", '{"model": "m", "messages": []}', 0, 1)
    key = Estimator(settings, "fp").prepare([row])[0].key
    assert key.project == "proj_123" and "proj_123" in str(key)
    result = invoke(
        "run", str(chat_file(tmp_path / "p.jsonl", 2)), "--base-url", fake.url, "--project", "proj_123"
    )
    assert result.exit_code == 0, result.stderr
    assert fake.stats()["projects"] == {"proj_123": 2}
