"""Fail fast and clearly, through the CLI in process.

Input that cannot work is refused with `FILE:LINE: field: problem`, nothing stored, nothing sent. Every other
expected failure is one line on stderr, never a traceback. A bug is one line naming the file that holds its
traceback (or the traceback itself with --debug). Batches run with --skip-invalid take every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import Result
from sqlalchemy import func, select

from pipeline.cli import EXIT_BUG, EXIT_INVALID_INPUT, EXIT_SOME_FAILED
from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings
from pipeline.store.db import open_database
from pipeline.store.models import Batch, Request
from tests.conftest import invoke
from tests.helpers import chat_line, db_rows, parse_csv, parse_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def stderr_lines(result: Result) -> list[str]:
    """stderr as lines, after checking no traceback was printed anywhere."""
    assert "Traceback" not in result.stdout + result.stderr
    return result.stderr.splitlines()


def one_line(result: Result) -> str:
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    return lines[0]


def row_counts() -> tuple[int, int]:
    """(batches, requests) in the test's database."""
    with open_database(Settings.load().db_url).read() as s:
        return (
            s.scalar(select(func.count()).select_from(Batch)) or 0,
            s.scalar(select(func.count()).select_from(Request)) or 0,
        )


def assert_refused(result: Result, fake: FakeServer) -> None:
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert stderr_lines(result)[-1].endswith(
        "nothing was stored or sent (fix them, or pass --skip-invalid to run the valid lines and record "
        "these as failed)"
    )
    assert row_counts() == (0, 0)
    assert fake.stats()["received"] == 0


def run(fake: FakeServer, path: Path, *extra: str) -> Result:
    return invoke("run", str(path), "--base-url", fake.url, *extra)


# --- batches run with --skip-invalid take every command ------------------------------------------------


def status_of(batch_id: str) -> dict[str, Any]:
    """`status --json`, after checking its counts add up."""
    result = invoke("status", batch_id, "--json")
    assert result.exit_code == 0, result.output
    status: dict[str, Any] = orjson.loads(result.stdout)
    parts = ("succeeded", "failed", "cancelled", "queued", "running")
    assert status["total"] == sum(status[p] for p in parts), status
    return status


def test_every_command_works_on_a_batch_run_with_skip_invalid(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    no_model = {**chat_line("no-model", "hi"), "body": {"messages": [{"role": "user", "content": "hi"}]}}
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps(item) + b"\n" if isinstance(item, dict) else item
            for item in (
                chat_line("a", "hi"),
                b"{broken\n",
                chat_line("b", "yo"),
                no_model,
                chat_line("c", "x"),
            )
        )
    )
    result = run(fake, path, "--skip-invalid")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    batch_id = result.stdout.split()[-1]
    status = status_of(batch_id)
    assert (status["total"], status["succeeded"], status["failed"]) == (5, 3, 2)

    for args in (
        ("retry", batch_id),
        ("retry", batch_id, "--status", "failed", "--status", "cancelled"),
        ("cancel", batch_id),
        ("resume", batch_id),
        ("retry", batch_id, "--status", "cancelled"),
    ):
        result = invoke(*args, "--base-url", fake.url) if args[0] != "cancel" else invoke(*args)
        assert result.exit_code in (0, EXIT_SOME_FAILED), (args, result.output)
        assert "Traceback" not in result.output
        if args[0] == "retry":
            assert f"batch {batch_id}: 0 requests queued again" in result.stderr
        status = status_of(batch_id)
        assert (status["succeeded"], status["failed"], status["queued"], status["running"]) == (3, 2, 0, 0)

    rows = db_rows(batch_id)
    invalid = {
        cid: row["request"] for cid, row in rows.items() if row["request"].error_type == "invalid_line"
    }
    assert sorted(invalid) == ["invalid-line-2", "invalid-line-4"]
    assert all(r.status == "failed" and r.attempts == 0 and r.finished_at for r in invalid.values())
    assert fake.stats()["received"] == 3  # the invalid lines were never sent

    for fmt, parse in (("csv", parse_csv), ("jsonl", parse_jsonl), ("openai", parse_jsonl)):
        result = invoke("export", batch_id, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert len(parse(result.stdout)) == 5, fmt


# --- validation refuses what cannot work ---------------------------------------------------------------


def test_stream_true_is_refused(fake: FakeServer, tmp_path: Path) -> None:
    lines = [chat_line("a", "hi"), chat_line("b", "hi", stream=True), chat_line("c", "hi")]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    result = run(fake, path)
    assert_refused(result, fake)
    assert len(stderr_lines(result)) == 2
    assert stderr_lines(result)[0] == (
        f"{path}:2: body.stream: not supported (answers are stored whole, never as streamed chunks); "
        "remove it"
    )


def test_endpoint_flag_contradicting_batch_lines(fake: FakeServer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(f"q{i}", "hi") for i in range(60)])
    result = run(fake, path, "--endpoint", "completions")
    assert_refused(result, fake)
    assert stderr_lines(result)[:2] == [
        f"{path}:1: url: '/v1/chat/completions' contradicts --endpoint completions; "
        "Batch API lines name their own url: leave out --endpoint, or fix the url",
        "... and 59 more invalid line(s)",
    ]
    assert len(stderr_lines(result)) == 3


def test_shorthand_file_without_endpoint_gets_one_hint(fake: FakeServer, tmp_path: Path) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    path = write_jsonl(tmp_path / "short.jsonl", [body] * 60)
    result = run(fake, path)
    assert_refused(result, fake)
    lines = stderr_lines(result)
    assert lines[:2] == [
        f"{path}:1: unknown keys 'model', 'messages'; "
        "add --endpoint chat (the lines look like bare chat request bodies)",
        "... and 59 more invalid line(s)",
    ]
    assert len(lines) == 3 and result.stderr.count("--endpoint chat") == 1


def test_the_shorthand_example_runs_with_the_hinted_flag(fake: FakeServer) -> None:
    path = REPO / "jobs" / "shorthand-chat.jsonl"
    assert_refused(run(fake, path), fake)
    assert run(fake, path, "--endpoint", "chat").exit_code == 0
    assert fake.stats()["answered"] == 3


def test_line_over_the_configured_size(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_MAX_LINE_BYTES", "1000")
    lines = [chat_line("a", "hi"), chat_line("b", "x" * 2000), chat_line("c", "hi")]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    size = len(orjson.dumps(lines[1]))
    result = run(fake, path)
    assert_refused(result, fake)
    assert stderr_lines(result)[0] == (
        f"{path}:2: line too long: {size:,} bytes, over the limit of 1,000 (PIPELINE_MAX_LINE_BYTES)"
    )


def test_a_50_mb_line_is_refused_by_default(fake: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(chat_line("a", "hi")) + b"\n")
        fh.write(orjson.dumps(chat_line("big", "x" * (50 * 1024 * 1024))) + b"\n")
    result = run(fake, path)
    assert_refused(result, fake)
    assert stderr_lines(result)[0].startswith(f"{path}:2: line too long: 52,428,")
    assert "over the limit of 8,388,608" in stderr_lines(result)[0]


def test_custom_id_too_long_for_the_column(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "hi"), chat_line("x" * 10_000, "hi")])
    result = run(fake, path)
    assert_refused(result, fake)
    assert stderr_lines(result)[0] == f"{path}:2: custom_id: 10,000 characters, over the limit of 512"


def test_custom_id_at_the_limit_is_stored_on_every_database(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    longest = "é" * 512  # characters, not bytes: what varchar(512) counts
    result = run(fake, write_jsonl(tmp_path / "jobs.jsonl", [chat_line(longest, "hi")]))
    assert result.exit_code == 0, result.output
    assert db_rows(result.stdout.split()[-1])[longest]["request"].status == "succeeded"


# --- generated ids never collide with given ones --------------------------------------------------------


def test_generated_ids_never_collide_with_given_ones(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Given first: the generated id takes a free suffix. Generated first: the given line is a clear error."""
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(
        orjson.dumps(chat_line("invalid-line-4", "given before the bad line 4"))
        + b"\n{broken\n"
        + orjson.dumps(chat_line("invalid-line-2", "given after the bad line 2"))
        + b"\n{broken again\n"
    )
    result = run(fake, path, "--skip-invalid")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "Traceback" not in result.output
    rows = db_rows(result.stdout.split()[-1])
    by_line = {row["request"].line: (custom_id, row["request"].status) for custom_id, row in rows.items()}
    assert by_line == {
        1: ("invalid-line-4", "succeeded"),
        2: ("invalid-line-2", "failed"),
        3: ("invalid-line-3", "failed"),
        4: ("invalid-line-4~2", "failed"),
    }
    assert rows["invalid-line-3"]["request"].error_message == (
        f"{path}:3: custom_id: duplicate 'invalid-line-2' (generated for line 2)"
    )
    assert fake.stats()["received"] == 1


def test_shorthand_ids_never_collide_with_given_ones(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bare"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat_line("line-2", "given"), body])
    result = run(fake, path, "--endpoint", "chat")
    assert result.exit_code == 0, result.output
    assert sorted(db_rows(result.stdout.split()[-1])) == ["line-2", "line-2~2"]


def test_a_given_id_equal_to_an_earlier_generated_one_is_a_clear_error(
    fake: FakeServer, tmp_path: Path
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bare"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [body, chat_line("line-1", "given")])
    result = run(fake, path, "--endpoint", "chat")
    assert_refused(result, fake)
    assert stderr_lines(result)[0] == f"{path}:2: custom_id: duplicate 'line-1' (generated for line 1)"


# --- one line, never a traceback ------------------------------------------------------------------------


def test_missing_job_file(fake: FakeServer) -> None:
    result = invoke("run", "/nonexistent.jsonl", "--base-url", fake.url)
    assert result.exit_code == 1
    assert one_line(result) == "Error: cannot read job file /nonexistent.jsonl: No such file or directory"
    assert row_counts() == (0, 0)
    assert fake.stats()["received"] == 0


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_directory_as_job_file(fake: FakeServer, tmp_path: Path, command: str) -> None:
    extra = ["--base-url", fake.url] if command == "run" else []
    result = invoke(command, str(tmp_path), *extra)
    assert result.exit_code == 1
    assert one_line(result) == f"Error: cannot read job file {tmp_path}: Is a directory"
    assert row_counts() == (0, 0)
    assert fake.stats()["received"] == 0


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (lambda tmp: tmp, "Is a directory"),
        (lambda tmp: tmp / "missing" / "out.csv", "No such file or directory"),
        (lambda tmp: Path("/dev/full"), "No space left on device"),  # root writes anywhere: a full disk
    ],
    ids=["directory", "missing directory", "unwritable"],
)
def test_export_to_a_path_that_cannot_be_written(
    fake: FakeServer, tmp_path: Path, target: Any, reason: str
) -> None:
    assert run(fake, write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "hi")])).exit_code == 0
    out = target(tmp_path)
    result = invoke("export", "--format", "csv", "-o", str(out))
    assert result.exit_code == 1
    assert one_line(result) == f"Error: cannot write {out}: {reason}"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite:////proc/x/db", "No such file or directory: /proc/x"),
        ("sqlite:///{tmp}/jobs.jsonl", "file is not a database"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "connection failed"),
    ],
    ids=["cannot be created", "not a database", "unreachable"],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_database_that_cannot_be_used(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, reason: str, command: str
) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "hi")])
    url = url.format(tmp=tmp_path)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
    result = invoke(command, *([str(path), "--base-url", fake.url] if command == "run" else []))
    assert result.exit_code == 1
    line = one_line(result)
    if command == "status" and url.startswith("sqlite:////proc"):
        # a reading command never creates a database: there is none there, so no batch either
        assert line == "Error: no batches yet: no database at /proc/x/db (run or submit a job file first)"
        return
    assert line.startswith(("Error: cannot use database ", "Error: cannot reach database ")), line
    assert url in line and reason in line
    assert fake.stats()["received"] == 0


def test_a_database_that_cannot_be_written(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "ro.db"
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///{db_file}")
    open_database(f"sqlite:///{db_file}").engine.dispose()  # creates and migrates it, in WAL mode
    # tests run as root, which writes any file: open it read-only instead
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///file:{db_file}?mode=ro&uri=true")
    result = run(fake, write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "hi")]))
    assert result.exit_code == 1
    assert one_line(result) == "Error: database error: attempt to write a readonly database"
    assert fake.stats()["received"] == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read limits file {path}: No such file or directory"),
        ('{"gpt-4o-mini": {"rpm": 10', "{path}: not valid JSON: "),
        ('{"*": {"rpm": -1}}', "{path}: '*': rpm: expected a positive integer, got -1"),
    ],
    ids=["missing", "not json", "negative"],
)
def test_a_bad_limits_file_is_reported_before_anything_is_stored(
    fake: FakeServer, tmp_path: Path, content: str | None, reason: str
) -> None:
    limits = tmp_path / "limits.json"
    if content is not None:
        limits.write_text(content)
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_line("a", "hi")])
    result = run(fake, path, "--limits-file", str(limits))
    assert result.exit_code == 1
    assert one_line(result).startswith("Error: " + reason.format(path=limits))
    assert row_counts() == (0, 0)
    assert fake.stats()["received"] == 0


# --- a bug: one line and where its traceback is ---------------------------------------------------------


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom\nsecond line")


def test_an_unexpected_error_is_one_line_and_a_saved_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from pipeline.store import overview

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert invoke("db", "upgrade").exit_code == 0
    monkeypatch.setattr(overview, "find_batch", _boom)  # status finds its batch there
    result = invoke("status")
    assert result.exit_code == EXIT_BUG
    line = one_line(result)
    assert line.startswith("Error: unexpected RuntimeError: boom (a bug in pipeline; traceback in ")
    [saved] = tmp_path.glob("pipeline-error-*.txt")
    assert str(saved) in line
    text = saved.read_text()
    assert "command status" in text and "Traceback" in text and "RuntimeError: boom" in text


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.store import overview

    assert invoke("db", "upgrade").exit_code == 0
    monkeypatch.setattr(overview, "find_batch", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        invoke("--debug", "status")
