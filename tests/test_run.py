"""`pipeline run` end to end through the CLI, against the fake API over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_SOME_FAILED
from pipeline.fakeapi import FakeServer
from tests.conftest import invoke
from tests.helpers import (
    attempt_count,
    chat_file,
    chat_line,
    db_rows,
    parse_csv,
    parse_jsonl,
    write_jsonl,
)


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def run(fake: FakeServer, path: Path, *extra: str) -> tuple[int, str, str]:
    result = invoke("run", str(path), "--base-url", fake.url, *extra)
    return result.exit_code, result.stdout, result.stderr


def test_300_requests_through_5xx_and_hangs_all_succeed_and_exports_agree(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.config.error_rate = 0.05
    fake.config.hang_rate = 0.02
    code, out, err = run(
        fake, chat_file(tmp_path / "jobs.jsonl", 300), "--timeout", "1", "--max-attempts", "12"
    )
    assert code == 0, err
    batch_id = out.strip().splitlines()[-1]

    stats = fake.stats()
    assert sum(n for s, n in stats["by_status"].items() if s.startswith("5")) > 0, "no 5xx was injected"
    assert stats["received"] > 300, "no retries happened"
    # Every attempt the API saw is recorded, hung ones as timeouts. On a loaded machine an attempt can
    # also time out before the fake has read it, so the API sees at most what was recorded.
    assert attempt_count(batch_id) >= stats["received"]
    # Each row was answered once: one 200 per row among its attempts.
    assert attempt_count(batch_id, http_status=200) == 300

    status = orjson.loads(invoke("status", batch_id, "--json").stdout)
    assert status["total"] == 300 and status["succeeded"] == 300
    assert status["queued"] == status["running"] == status["failed"] == status["cancelled"] == 0

    rows = db_rows(batch_id)
    assert len(rows) == 300
    csv_rows = parse_csv(invoke("export", batch_id, "--format", "csv").stdout)
    jsonl_rows = parse_jsonl(invoke("export", batch_id, "--format", "jsonl").stdout)
    openai_rows = parse_jsonl(invoke("export", batch_id, "--format", "openai").stdout)
    assert {r["custom_id"] for r in csv_rows} == set(rows)
    assert {r["custom_id"] for r in jsonl_rows} == set(rows)
    assert {r["custom_id"] for r in openai_rows} == set(rows)
    for row in csv_rows:
        stored = rows[row["custom_id"]]
        assert row["status"] == "succeeded" and row["http_status"] == "200"
        assert row["output"] == stored["result"].output
        assert int(row["total_tokens"]) == stored["result"].total_tokens
        assert int(row["attempts"]) == stored["request"].attempts
        assert row["output"] == f"echo: {row['custom_id'].replace('req-', 'req question ')}"
    for line in openai_rows:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == rows[line["custom_id"]]["result"].output
    for obj in jsonl_rows:
        assert obj["status"] == "succeeded"
        assert obj["usage"]["total_tokens"] == rows[obj["custom_id"]]["result"].total_tokens


def test_finish_reasons_function_calls_and_n_choices_are_stored(fake: FakeServer, tmp_path: Path) -> None:
    lines = [
        chat_line("plain", "hello"),
        chat_line("short", "a long question that needs many tokens to answer properly", max_tokens=2),
        chat_line("two", "pick two", n=2),
        chat_line(
            "forced",
            "weather?",
            functions=[{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
            function_call={"name": "get_weather"},
        ),
    ]
    code, out, err = run(fake, write_jsonl(tmp_path / "jobs.jsonl", lines))
    assert code == 0, err
    rows = db_rows(out.strip().splitlines()[-1])
    assert rows["plain"]["result"].finish_reasons == "stop"
    assert rows["short"]["result"].finish_reasons == "length"
    assert rows["short"]["result"].completion_tokens == 2
    assert rows["two"]["result"].finish_reasons == "stop|stop"
    assert rows["forced"]["result"].finish_reasons == "function_call"
    assert "get_weather" in (rows["forced"]["result"].output or "")
    # Sent as given: every parameter reached the API untouched (the fake fingerprints the raw body).
    assert all(entry["received"] == 1 for entry in fake.stats()["bodies"].values())


def test_permanent_errors_fail_at_once_and_the_exit_code_says_so(fake: FakeServer, tmp_path: Path) -> None:
    """A 4xx about one line (here the fake is told to answer 400 context_length_exceeded) fails that line."""
    too_long = 'fake:{"status": 400, "code": "context_length_exceeded", "message": "too long"}'
    lines = [chat_line("ok", "hi"), chat_line("too-long", too_long)]
    code, out, err = run(fake, write_jsonl(tmp_path / "jobs.jsonl", lines))
    assert code == EXIT_SOME_FAILED
    rows = db_rows(out.strip().splitlines()[-1])
    assert rows["ok"]["request"].status == "succeeded"
    failed = rows["too-long"]["request"]
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error_type == "context_length_exceeded"
    assert rows["too-long"]["result"].http_status == 400
    assert fake.stats()["received"] == 2
    openai = {r["custom_id"]: r for r in parse_jsonl(invoke("export", "--format", "openai").stdout)}
    assert openai["too-long"]["error"] is None
    assert openai["too-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert "1 failed: context_length_exceeded" in err


def test_running_the_same_file_again_continues_its_batch_and_sends_nothing_twice(
    fake: FakeServer, tmp_path: Path
) -> None:
    path = chat_file(tmp_path / "jobs.jsonl", 20)
    first = run(fake, path)
    received = fake.stats()["received"]
    second = run(fake, path)
    assert first[0] == second[0] == 0
    assert first[1].split()[-1] == second[1].split()[-1]
    assert "already submitted" in second[2]
    assert fake.stats()["received"] == received
    forced = run(fake, path, "--force")
    assert forced[1].split()[-1] != first[1].split()[-1]
    assert fake.stats()["received"] == received + 20


def test_shorthand_bodies_get_line_numbered_custom_ids(fake: FakeServer, tmp_path: Path) -> None:
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    path = write_jsonl(tmp_path / "bare.jsonl", bodies)
    code, out, err = run(fake, path, "--endpoint", "chat")
    assert code == 0, err
    assert set(db_rows(out.split()[-1])) == {"line-1", "line-2", "line-3"}


def test_completions_endpoint(fake: FakeServer, tmp_path: Path) -> None:
    line = {
        "custom_id": "c",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 50},
    }
    code, out, err = run(fake, write_jsonl(tmp_path / "c.jsonl", [line]))
    assert code == 0, err
    result = db_rows(out.split()[-1])["c"]["result"]
    assert result.output == "echo: Say hi" and result.finish_reasons == "stop"


def test_skip_invalid_runs_the_valid_lines_and_records_the_rest_as_failed(
    fake: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        orjson.dumps(chat_line("good", "hi"))
        + b"\n{not json\n"
        + orjson.dumps(chat_line("good2", "yo"))
        + b"\n"
    )
    code, out, err = run(fake, path, "--skip-invalid")
    assert code == EXIT_SOME_FAILED
    status = orjson.loads(invoke("status", "--json").stdout)
    assert (status["total"], status["succeeded"], status["failed"]) == (3, 2, 1)
    bad = db_rows(out.split()[-1])["invalid-line-2"]["request"]
    assert bad.error_type == "invalid_line" and bad.error_message.startswith(f"{path}:2: invalid JSON")
    assert fake.stats()["received"] == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "openai"])
def test_export_to_a_file(fake: FakeServer, tmp_path: Path, fmt: str) -> None:
    run(fake, chat_file(tmp_path / "jobs.jsonl", 5))
    out = tmp_path / f"out.{fmt}"
    result = invoke("export", "--format", fmt, "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    text = out.read_text()
    assert len(parse_csv(text) if fmt == "csv" else parse_jsonl(text)) == 5


def test_a_failing_write_is_retried_and_nothing_is_lost(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer must survive any error (here the pool's TimeoutError), or chunks would wait forever."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from pipeline.store import claims

    real_record, failures = claims.record, []

    def flaky_record(*args: object, **kwargs: object) -> list[claims.Outcome]:
        if len(failures) < 2:
            failures.append(1)
            raise PoolTimeout("QueuePool limit reached")
        return real_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(claims, "record", flaky_record)
    code, out, err = run(fake, chat_file(tmp_path / "jobs.jsonl", 50))
    assert code == 0, err
    assert len(failures) == 2
    status = orjson.loads(invoke("status", out.split()[-1], "--json").stdout)
    assert status["succeeded"] == 50 and status["running"] == 0
    assert fake.stats()["received"] == 50
