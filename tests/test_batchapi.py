"""`pipeline run --via batch-api` end to end, in process, against the fake Batch API over real HTTP.

Every test runs on SQLite and PostgreSQL (`database_url`). Waits are bounded by the fake's processing time
and the polls (PIPELINE_BATCH_POLL_SECONDS is short here); nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from pipeline.batchapi.ingest import Window, store_rejection
from pipeline.batchapi.options import BatchApiOptions
from pipeline.batchapi.plan import plan_parts
from pipeline.cli import EXIT_INVALID_INPUT, EXIT_SOME_FAILED
from pipeline.fakeapi import FakeServer
from pipeline.fakeapi._chat import plan_chat
from pipeline.jobs.intake import store_job_file
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Part, Request, Via
from tests.conftest import invoke
from tests.helpers import chat_line, parse_csv, parse_jsonl, write_jsonl
from tests.test_audio import audio_line, write_wav

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_BATCH_POLL_SECONDS", "0.3")


def directive(**how: Any) -> str:
    return "fake:" + orjson.dumps(how).decode()


def run(fake: FakeServer, database_url: str, path: Path, *extra: str) -> tuple[int, str, str]:
    result = invoke("run", str(path), "--base-url", fake.url, "--database-url", database_url, *extra)
    return (
        result.exit_code,
        result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "",
        result.stderr,
    )


def status(database_url: str, batch_id: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(
        invoke("status", batch_id, "--json", "--database-url", database_url).stdout
    )
    return result


def attempts_of(database_url: str, batch_id: str) -> dict[str, list[Attempt]]:
    """custom_id -> its attempts, in order."""
    db = Database(database_url)
    try:
        with db.read() as s:
            rows = s.execute(
                select(Request.custom_id, Attempt)
                .join(Attempt, Attempt.request_id == Request.id)
                .where(Request.batch_id == batch_id)
                .order_by(Attempt.number)
            ).all()
        found: dict[str, list[Attempt]] = {}
        for custom_id, attempt in rows:
            found.setdefault(custom_id, []).append(attempt)
        return found
    finally:
        db.engine.dispose()


def requests_of(database_url: str, batch_id: str) -> dict[str, Request]:
    db = Database(database_url)
    try:
        with db.read() as s:
            return {r.custom_id: r for r in s.scalars(select(Request).where(Request.batch_id == batch_id))}
    finally:
        db.engine.dispose()


def answered_twice(fake: FakeServer) -> int:
    return sum(1 for entry in fake.stats()["bodies"].values() if entry["answered"] > 1)


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys all the way down, scalars by type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def two_model_file(tmp_path: Path) -> Path:
    lines = [chat_line(f"mini-{i}", f"mini question {i}") for i in range(5)]
    lines += [
        {
            **chat_line(f"big-{i}", "x"),
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"big {i}"}]},
        }
        for i in range(3)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", lines)


def test_three_parts_store_what_a_direct_run_stores(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    fake.config.batch_seconds = 1.0
    path = two_model_file(tmp_path)
    code, batch_id, err = run(fake, database_url, path, "--via", "batch-api", "--part-size", "3")
    assert code == 0, err

    api = fake.stats()["batch_api"]
    assert len(api["uploaded"]) == len(set(api["uploaded"])) == 3
    assert Counter(c["metadata"]["pipeline_part"] for c in api["created"]) == Counter(
        {p["part"]: 1 for p in status(database_url, batch_id)["parts"]}
    )
    report = status(database_url, batch_id)
    assert (report["via"], report["succeeded"], report["total"]) == ("batch-api", 8, 8)
    assert sorted((p["model"], p["lines"], p["remote_status"], p["state"]) for p in report["parts"]) == [
        ("gpt-4o", 3, "completed", "done"),
        ("gpt-4o-mini", 2, "completed", "done"),
        ("gpt-4o-mini", 3, "completed", "done"),
    ]
    assert all(p["request_counts"]["completed"] == p["lines"] for p in report["parts"])
    assert fake.stats()["received"] == 0  # nothing went directly

    code, direct_id, err = run(fake, database_url, path, "--force")
    assert code == 0, err
    via = attempts_of(database_url, batch_id)
    assert {c: [(a.via, a.http_status) for a in found] for c, found in via.items()} == {
        c: [("batch-api", 200)] for c in via
    }
    assert len(via) == 8 and all(a.prompt_tokens and a.total_tokens for found in via.values() for a in found)
    assert all(a.via is None for found in attempts_of(database_url, direct_id).values() for a in found)

    def export(batch: str, fmt: str) -> str:
        return invoke("export", batch, "--format", fmt, "--database-url", database_url).stdout

    batch_csv, direct_csv = parse_csv(export(batch_id, "csv")), parse_csv(export(direct_id, "csv"))
    assert [{k: v for k, v in r.items() if k != "latency_ms"} for r in batch_csv] == [
        {k: v for k, v in r.items() if k != "latency_ms"} for r in direct_csv
    ]
    for fmt in ("jsonl", "openai"):
        batch_rows, direct_rows = parse_jsonl(export(batch_id, fmt)), parse_jsonl(export(direct_id, fmt))
        assert [shape(r) for r in batch_rows] == [shape(r) for r in direct_rows]
    batch_jsonl, direct_jsonl = (
        parse_jsonl(export(batch_id, "jsonl")),
        parse_jsonl(export(direct_id, "jsonl")),
    )
    for ours, theirs in zip(batch_jsonl, direct_jsonl, strict=True):
        for key in ("custom_id", "status", "output", "usage", "finish_reasons", "request", "error"):
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("mode", ["resubmit", "direct", "fail"])
def test_expired_lines_are_sent_again_the_way_on_expire_says(
    fake: FakeServer, database_url: str, tmp_path: Path, mode: str
) -> None:
    fake.config.batch_expire_rate = 0.3
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q-{i}", f"question {i}") for i in range(20)])
    code, batch_id, err = run(fake, database_url, path, "--via", "batch-api", "--on-expire", mode)
    api = fake.stats()["batch_api"]
    expired = api["lines"]["expired"]
    assert expired > 0
    attempts = attempts_of(database_url, batch_id)
    first_expired = {c for c, found in attempts.items() if found[0].error_type == "batch_expired"}
    rows = requests_of(database_url, batch_id)
    assert answered_twice(fake) == 0  # nothing paid twice
    if mode == "fail":
        assert code == EXIT_SOME_FAILED
        assert len(api["created"]) == 1 and fake.stats()["received"] == 0
        assert {c for c, r in rows.items() if r.status == "failed"} == first_expired
        assert {r.error_type for r in rows.values() if r.status == "failed"} == {"batch_expired"}
        return
    assert code == 0, err
    assert all(r.status == "succeeded" for r in rows.values())
    assert all(found[-1].http_status == 200 for found in attempts.values())
    assert {c: len(found) for c, found in attempts.items() if c in first_expired} == {
        c: rows[c].attempts for c in first_expired
    }
    if mode == "direct":
        assert len(api["created"]) == 1
        assert fake.stats()["received"] == expired == len(first_expired)
        assert all([a.via for a in attempts[c]] == ["batch-api", None] for c in first_expired)
    else:
        assert len(api["created"]) >= 2 and fake.stats()["received"] == 0
        assert all(a.via == "batch-api" for found in attempts.values() for a in found)


def test_a_200_that_is_not_an_answer_and_per_line_errors_fail_their_lines(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    lines = [
        chat_line("ok", "hello"),
        chat_line("html", directive(body="html")),
        chat_line("refused", directive(status=400, code="context_length_exceeded")),
    ]
    code, batch_id, _ = run(
        fake, database_url, write_jsonl(tmp_path / "j.jsonl", lines), "--via", "batch-api"
    )
    assert code == EXIT_SOME_FAILED
    rows = requests_of(database_url, batch_id)
    assert {c: (r.status, r.error_type) for c, r in rows.items()} == {
        "ok": ("succeeded", None),
        "html": ("failed", "bad_response"),
        "refused": ("failed", "context_length_exceeded"),
    }
    attempts = attempts_of(database_url, batch_id)
    assert [(a.http_status, a.via) for a in attempts["refused"]] == [(400, "batch-api")]


def test_a_part_the_api_rejects_for_good_is_reported_with_its_errors(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    fake.config.batch_max_lines = 2
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q-{i}", f"question {i}") for i in range(3)])
    code, batch_id, err = run(fake, database_url, path, "--via", "batch-api")
    assert code == EXIT_SOME_FAILED
    assert "failed" in err and "max_requests_exceeded" in err
    report = status(database_url, batch_id)
    assert report["failed"] == 3 and report["errors"] == {"max_requests_exceeded": 3}
    (part,) = report["parts"]
    assert part["remote_status"] == "failed" and part["state"] == "done"
    assert part["errors"][0]["code"] == "max_requests_exceeded"
    assert "at most 2" in part["errors"][0]["message"]
    text = invoke("status", batch_id, "--database-url", database_url).stdout
    assert "via the Batch API: 1 parts" in text


def test_a_part_whose_file_the_api_refuses_to_take_fails_with_its_error(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    fake.config.batch_max_bytes = 100
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q-{i}", f"question {i}") for i in range(3)])
    code, batch_id, _ = run(fake, database_url, path, "--via", "batch-api")
    assert code == EXIT_SOME_FAILED
    report = status(database_url, batch_id)
    (part,) = report["parts"]
    assert (part["remote_batch_id"], part["state"], part["tries"]) == (None, "done", 1)
    assert part["errors"][0]["message"] == "HTTP 400: File is too large."
    rows = requests_of(database_url, batch_id)
    assert {(r.status, r.error_message) for r in rows.values()} == {
        ("failed", "HTTP 400: File is too large.")
    }
    assert fake.stats()["batch_api"]["created"] == []


def test_a_part_over_the_enqueued_token_limit_is_tried_again_later(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    lines = [chat_line(f"q-{i}", f"question {i:02d}") for i in range(6)]
    tokens = plan_chat(orjson.dumps(lines[0]["body"]), None).tokens
    fake.config.batch_token_limit = 4 * tokens  # one part of three fits, two do not
    fake.config.batch_seconds = 1.0
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    code, batch_id, err = run(
        fake, database_url, path, "--via", "batch-api", "--part-size", "3", "--max-attempts", "50"
    )
    assert code == 0, err
    report = status(database_url, batch_id)
    assert report["succeeded"] == 6
    retried = [p for p in report["parts"] if p["tries"] > 1]
    assert len(retried) == 1 and retried[0]["errors"][0]["code"] == "token_limit_exceeded"
    created = Counter(c["metadata"]["pipeline_part"] for c in fake.stats()["batch_api"]["created"])
    assert created[retried[0]["part"]] == retried[0]["tries"]
    assert answered_twice(fake) == 0


def test_audio_is_refused_unless_sent_directly(fake: FakeServer, database_url: str, tmp_path: Path) -> None:
    write_wav(tmp_path / "clip.wav", 1.0)
    lines = [chat_line("chat", "hello"), audio_line("audio", "/v1/audio/transcriptions", "clip.wav")]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    refused = invoke(
        "run", str(path), "--via", "batch-api", "--base-url", fake.url, "--database-url", database_url
    )
    assert refused.exit_code == EXIT_INVALID_INPUT
    assert "jobs.jsonl:2: the Batch API does not take /v1/audio/transcriptions requests" in refused.stderr
    assert "--audio-direct" in refused.stderr
    code, batch_id, err = run(fake, database_url, path, "--via", "batch-api", "--audio-direct")
    assert code == 0, err
    attempts = attempts_of(database_url, batch_id)
    assert [a.via for a in attempts["chat"]] == ["batch-api"]
    assert [a.via for a in attempts["audio"]] == [None]
    assert fake.stats()["received"] == 1  # the audio line, directly


def test_batch_api_options_need_via_batch_api(fake: FakeServer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "b")])
    result = invoke("run", str(path), "--on-expire", "fail", "--base-url", fake.url)
    assert result.exit_code == 2 and "--via batch-api" in result.stderr


def test_parts_hold_their_rows_under_their_own_name(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q-{i}", f"question {i}") for i in range(4)])
    code, batch_id, err = run(fake, database_url, path, "--via", "batch-api", "--part-size", "2")
    assert code == 0, err
    db = Database(database_url)
    try:
        with db.read() as s:
            parts = {p.id: p for p in s.scalars(select(Part).where(Part.batch_id == batch_id))}
            rows = list(s.scalars(select(Request).where(Request.batch_id == batch_id)))
    finally:
        db.engine.dispose()
    assert Counter(r.worker for r in rows) == {f"part:{p}": 2 for p in parts}
    assert all(r.fence == parts[r.worker.removeprefix("part:")].fence for r in rows if r.worker)
    assert all(p.holder is None and p.finished_at is not None for p in parts.values())


def test_a_rejection_that_names_lines_fails_those_and_plans_the_rest_again(
    database_url: str, tmp_path: Path
) -> None:
    """The fake never names a line of a file pipeline writes, so the store is driven directly here."""
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q-{i}", f"question {i}") for i in range(4)])
    db = Database(database_url)
    db.upgrade()
    try:
        settings = Settings.load({"database_url": database_url})
        intake = store_job_file(db, settings, str(path), via=Via.BATCH_API, batch_api=BatchApiOptions())
        (part,) = plan_parts(db, batches.get_batch(db, intake.batch_id))
        errors = [{"code": "invalid_body", "message": "line two is wrong", "line": 2}]
        tally = asyncio.run(store_rejection(db, part, errors, Window.of({})))
        assert (tally.failed, tally.requeued) == (1, 3)
        rows = requests_of(database_url, intake.batch_id)
        assert (rows["q-1"].status, rows["q-1"].error_type, rows["q-1"].attempts) == (
            "failed",
            "invalid_body",
            1,
        )
        assert all(rows[c].status == "queued" and rows[c].worker is None for c in ("q-0", "q-2", "q-3"))
        (again,) = plan_parts(db, batches.get_batch(db, intake.batch_id))
        assert again.lines == 3 and again.fence > part.fence
    finally:
        db.engine.dispose()
