"""Priorities and shares from the command line, and migration 0009 on a database with rows in it. On SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text, update

from pipeline.fakeapi import FakeServer
from pipeline.jobs.intake import store_job_file
from pipeline.ratelimit.rules import LimitKey
from pipeline.settings import Settings
from pipeline.store import batch_rates
from pipeline.store.db import Database, open_database
from pipeline.store.models import BatchRate
from tests.conftest import invoke
from tests.fair_helpers import short_chat_file


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def stored(tmp_path: Path, name: str, n: int = 5) -> str:
    """A batch stored as `pipeline submit` would, its rows queued."""
    db = open_database(Settings.load().db_url)
    return store_job_file(
        db, Settings.load(), str(short_chat_file(tmp_path / f"{name}.jsonl", n, name))
    ).batch_id


def status(batch_id: str) -> dict[str, Any]:
    result = invoke("status", batch_id, "--json")
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


def test_priority_command_changes_a_batch_priority(tmp_path: Path) -> None:
    batch = stored(tmp_path, "p")
    assert status(batch)["priority"] == 1
    result = invoke("priority", batch[:6], "3")
    assert result.exit_code == 0 and result.stdout.strip() == batch
    assert f"batch {batch}: priority 1 -> 3" in result.stderr
    assert status(batch)["priority"] == 3
    for bad in ("0", "1001", "high"):
        assert invoke("priority", batch, bad).exit_code == 2
    missing = invoke("priority", "feedfacecafe", "2")
    assert missing.exit_code == 1 and "no batch" in missing.stderr


def test_run_priority_is_stored_and_a_finished_batch_has_no_share(fake: FakeServer, tmp_path: Path) -> None:
    path = short_chat_file(tmp_path / "jobs.jsonl", 20, "r")
    result = invoke("run", str(path), "--base-url", fake.url, "--priority", "4")
    assert result.exit_code == 0, result.stderr
    report = status(result.stdout.split()[-1])
    assert (report["priority"], report["succeeded"], report["share"], report["share_rpm"]) == (
        4,
        20,
        None,
        None,
    )
    assert invoke("run", str(path), "--base-url", fake.url, "--priority", "0").exit_code == 2


def save_rates(db: Database, rates: dict[tuple[str, str], float]) -> None:
    """Rates as engines save them: (batch, source) -> requests/min, on one key."""
    key = LimitKey("http://api.test/v1", "fp", None, "gpt-4o-mini")
    for (batch, source), rpm in rates.items():
        snapshot = {"batch_rpm": {batch: rpm}, "shared": source == batch_rates.SHARED}
        batch_rates.save_batch_rates(db, source, [(key, snapshot)])


def test_status_and_batches_show_each_running_batch_share(tmp_path: Path) -> None:
    high, low = stored(tmp_path, "high"), stored(tmp_path, "low")
    db = open_database(Settings.load().db_url)
    # Two engines with in-process limiters sent "high" (their own sends each), one of them "low" too.
    save_rates(db, {(high, "host:1"): 2000.0, (high, "host:2"): 2500.0, (low, "host:1"): 1500.0})
    report = status(high)
    assert (report["share"], report["share_rpm"]) == (0.75, 4500.0)
    assert status(low)["share"] == 0.25
    shown = invoke("status", high)
    assert "sending 75% of its key's requests lately (4,500 req/min)" in shown.stdout
    lines = [orjson.loads(line) for line in invoke("batches", "--json").stdout.splitlines()]
    assert {line["batch"]: (line["priority"], line["share"]) for line in lines} == {
        high: (1, 0.75),
        low: (1, 0.25),
    }
    table = invoke("batches").stdout
    assert "75%" in table and "25%" in table
    with db.write() as s:  # rates nobody refreshed for a minute are not current
        s.execute(update(BatchRate).values(updated_at=BatchRate.updated_at - timedelta(seconds=60)))
    assert status(high)["share"] is None


def test_a_shared_limiter_rates_count_once_whoever_saves_them(tmp_path: Path) -> None:
    high, low = stored(tmp_path, "high"), stored(tmp_path, "low")
    db = open_database(Settings.load().db_url)
    key = LimitKey("http://api.test/v1", "fp", None, "gpt-4o-mini")
    snapshot = {"batch_rpm": {high: 3000.0, low: 1000.0}, "shared": True}
    for engine in ("host:1", "host:2", "host:3"):  # three engines save the same Redis figures
        batch_rates.save_batch_rates(db, engine, [(key, snapshot)])
    assert batch_rates.shares(db, [high, low]) == {
        high: {"sent_rpm": 3000.0, "share": 0.75},
        low: {"sent_rpm": 1000.0, "share": 0.25},
    }


def test_migration_0009_keeps_rows_and_gives_submitted_batches_the_default_queue(database_url: str) -> None:
    from alembic import command

    from pipeline.store.db import alembic_config

    url = database_url
    command.upgrade(alembic_config(url), "0006")
    db = Database(url)
    insert = text(
        "INSERT INTO batches (id, created_at, source, content_hash, state, base_url, key_fingerprint, total,"
        " options, dispatch) VALUES (:id, '2026-01-01', 'f', :id, 'active', 'u', 'k', 1, '{}', :dispatch)"
    )
    with db.engine.begin() as conn:
        for batch, dispatch in (("sub", "broker"), ("ran", "local")):
            conn.execute(insert, {"id": batch, "dispatch": dispatch})
    db.ensure_schema()
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, priority, vtime, queue FROM batches ORDER BY id")).all()
        assert conn.execute(text("SELECT count(*) FROM batch_rates")).scalar_one() == 0
    db.engine.dispose()
    assert [tuple(r) for r in rows] == [("ran", 1, 0.0, None), ("sub", 1, 0.0, "pipeline")]
