"""A batch's life as users see it: in_progress -> completed (also when every row failed), paused,
cancelling -> cancelled; progress in a log file; failures at a glance; answers reused, never paid twice.
On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_SOME_FAILED
from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY, invoke
from tests.helpers import batch_of, chat_file, chat_line, parse_csv, status_of, write_jsonl
from tests.services import wait_for


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def pipeline_process(fake: FakeServer, tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """`pipeline ARGS` in another process, stderr to a file (as under nohup), against the fake."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": os.environ["PIPELINE_DATABASE_URL"],
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    with open(tmp_path / "stderr.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def test_a_batch_goes_in_progress_then_completed_with_finished_at(fake: FakeServer, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "jobs.jsonl", 20)
    batch_id = batch_of(invoke("submit", str(path)).stdout)  # stored, no worker to send it
    queued = status_of(batch_id)
    assert queued["state"] == "in_progress" and queued["finished_at"] is None and queued["in_flight"] == 0
    result = invoke("run", str(path), "--base-url", fake.url)  # the same file: continues the batch here
    assert result.exit_code == 0, result.stderr
    assert batch_of(result.stdout) == batch_id and "; completed" in result.stderr
    row = orjson.loads(invoke("batches", "--json").stdout)
    assert row["batch"] == batch_id and row["state"] == "completed" and row["succeeded"] == 20
    assert row["finished_at"] >= row["created_at"]


def test_every_row_failed_is_completed_too(fake: FakeServer, tmp_path: Path) -> None:
    lines = [
        chat_line(f"q{i}", 'fake:{"status": 400, "message": "bad thing ' + str(i) + '"}') for i in range(30)
    ]
    result = invoke("run", str(write_jsonl(tmp_path / "jobs.jsonl", lines)), "--base-url", fake.url)
    assert result.exit_code == EXIT_SOME_FAILED, result.stderr
    report = status_of(batch_of(result.stdout))
    assert report["state"] == "completed" and report["failed"] == 30 and report["finished_at"]
    (group,) = report["failures"]
    assert (group["error_type"], group["http_status"], group["count"]) == ("invalid_request_error", 400, 30)
    assert group["sample"].startswith("HTTP 400: bad thing")
    assert (
        "30 failed: invalid_request_error (HTTP 400)" in result.stderr and "pipeline errors" in result.stderr
    )

    errors = invoke("errors", report["batch"], "--json")
    rows = [orjson.loads(line) for line in errors.stdout.splitlines()]
    assert len(rows) == 30 and {r["custom_id"] for r in rows} == {f"q{i}" for i in range(30)}
    assert all(r["http_status"] == 400 and r["attempts"] == 1 for r in rows)
    assert all(r["message"].startswith("HTTP 400: bad thing") for r in rows)
    table = invoke("errors", report["batch"]).stdout.splitlines()
    assert table[0].split("\t") == ["custom_id", "error_type", "http_status", "attempts", "message"]
    assert len(table) == 31


def test_cancel_is_cancelling_while_requests_are_in_flight_then_cancelled(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.config.latency = 3.0
    path = chat_file(tmp_path / "jobs.jsonl", 500)
    proc = pipeline_process(fake, tmp_path, "run", str(path), "--max-in-flight", "20")
    try:
        wait_for(lambda: fake.stats()["in_flight"] >= 20, 60)
        batch_id = orjson.loads(invoke("batches", "--json").stdout.splitlines()[0])["batch"]
        wait_for(lambda: status_of(batch_id)["in_flight"] == 20, 30)  # saved by the engine every second
        result = invoke("cancel", batch_id, "--wait", "0")
        assert status_of(batch_id)["state"] == "cancelling"
        assert "requests cancelled" in result.stderr
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    final = status_of(batch_id)
    assert final["state"] == "cancelled" and final["finished_at"] and final["in_flight"] == 0
    # The requests in flight finished; the rest were never sent.
    assert final["succeeded"] == fake.stats()["answered"] == fake.stats()["received"] >= 20
    assert final["cancelled"] == 500 - final["succeeded"]


def test_progress_lines_appear_in_a_redirected_stderr(fake: FakeServer, tmp_path: Path) -> None:
    fake.config.latency = 0.5
    path = chat_file(tmp_path / "jobs.jsonl", 60)
    proc = pipeline_process(
        fake, tmp_path, "run", str(path), "--max-in-flight", "5", PIPELINE_PROGRESS_SECONDS="1"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    lines = [
        line for line in (tmp_path / "stderr.log").read_text().splitlines() if line.startswith("requests ")
    ]
    assert len(lines) >= 3, lines  # a run of about 6 s, a line a second, and the last one
    assert lines[-1].startswith("requests 60/60 (100%)")
    assert all("req/s" in line and "ETA" in line and "$" in line and "429s" in line for line in lines)


def test_status_watch_follows_the_batch_until_it_is_final(fake: FakeServer, tmp_path: Path) -> None:
    fake.config.latency = 0.3
    proc = pipeline_process(
        fake, tmp_path, "run", str(chat_file(tmp_path / "jobs.jsonl", 40)), "--max-in-flight", "4"
    )
    try:
        wait_for(lambda: fake.stats()["received"] > 0, 60)
        result = invoke("status", "--watch", "--json", "--interval", "0.5")
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    reports = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) >= 2 and reports[0]["state"] == "in_progress"
    assert reports[-1]["state"] == "completed" and reports[-1]["succeeded"] == 40
    assert all(r["state"] == "in_progress" for r in reports[:-1])


def test_reuse_sends_only_the_new_lines_of_an_edited_file(fake: FakeServer, tmp_path: Path) -> None:
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(50)]
    first = invoke("run", str(write_jsonl(tmp_path / "v1.jsonl", lines)), "--base-url", fake.url)
    assert first.exit_code == 0, first.stderr
    edited = [*lines[:49], chat_line("q49", "a brand new question")]
    path = write_jsonl(tmp_path / "v2.jsonl", edited)
    sent_before = fake.stats()["received"]

    result = invoke("run", str(path), "--base-url", fake.url, "--reuse")
    assert result.exit_code == 0, result.stderr
    assert fake.stats()["received"] - sent_before == 1
    assert "49 requests answered from identical stored answers" in result.stderr
    report = status_of(batch_of(result.stdout))
    assert report["succeeded"] == 50 and report["reused"] == 49 and report["attempts"] == 1
    assert report["state"] == "completed"
    rows = {r["custom_id"]: r for r in parse_csv(invoke("export", report["batch"], "--format", "csv").stdout)}
    assert len(rows) == 50 and rows["q7"]["attempts"] == "0" and rows["q7"]["output"] == "echo: question 7"
    assert rows["q7"]["status"] == "succeeded" and rows["q49"]["attempts"] == "1"

    again = invoke("run", str(path), "--base-url", fake.url, "--force")  # without --reuse: all sent, but told
    assert again.exit_code == 0, again.stderr
    assert "50 requests are identical to stored answers" in again.stderr and "--reuse would" in again.stderr
    assert fake.stats()["received"] - sent_before == 51


def test_batches_shows_whole_ids_on_a_narrow_terminal(fake: FakeServer, tmp_path: Path) -> None:
    result = invoke("run", str(chat_file(tmp_path / "jobs.jsonl", 3)), "--base-url", fake.url)
    batch_id = batch_of(result.stdout)
    for columns in ("80", "100"):
        table = subprocess.run(
            [sys.executable, "-m", "pipeline", "batches"],
            env={**os.environ, "COLUMNS": columns},
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert batch_id in table and "completed" in table


def test_retry_recounts_the_failures(fake: FakeServer, tmp_path: Path) -> None:
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(10)]
    lines += [
        chat_line(f"bad{i}", 'fake:{"status": 422, "times": 1, "message": "no ' + str(i) + '"}')
        for i in range(5)
    ]
    result = invoke("run", str(write_jsonl(tmp_path / "jobs.jsonl", lines)), "--base-url", fake.url)
    assert result.exit_code == EXIT_SOME_FAILED, result.stderr
    batch_id = batch_of(result.stdout)
    assert [(f["http_status"], f["count"]) for f in status_of(batch_id)["failures"]] == [(422, 5)]
    result = invoke("retry", batch_id, "--base-url", fake.url)  # the directive held once: now they succeed
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_id)
    assert report["failures"] == [] and report["errors"] == {} and report["succeeded"] == 15
    assert report["state"] == "completed"
