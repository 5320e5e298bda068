"""Fail fast and clearly, through the CLI in process: batches run with --skip-invalid take every command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import Result

from pipeline.cli import EXIT_SOME_FAILED
from pipeline.fakeapi import FakeServer
from tests.conftest import invoke
from tests.helpers import chat_line, db_rows, parse_csv, parse_jsonl


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
