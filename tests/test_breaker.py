"""The circuit breaker's rule, and an outage that asks for short waits: the batch pauses before any row
runs out of attempts, and `resume` completes it once the server answers again (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.cli import EXIT_PAUSED
from pipeline.errors import APIError, RetryableError
from pipeline.fakeapi import FakeServer
from pipeline.send.breaker import Breaker, Streak, trips
from pipeline.settings import Settings
from pipeline.store.db import open_database
from pipeline.store.models import Attempt, Request
from tests.conftest import invoke
from tests.helpers import batch_of, chat_file, status_of

DOWN = RetryableError("HTTP 503", status=503)


@pytest.mark.parametrize(
    ("streak", "expected"),
    [
        (Streak(attempts=20, rows=20, seconds=20.0, attempt=1, all_inside=True), True),  # a long outage
        (Streak(attempts=20, rows=20, seconds=19.9, attempt=1, all_inside=True), False),  # a short burst
        (Streak(attempts=19, rows=1, seconds=60.0, attempt=5, all_inside=True), False),
        (Streak(attempts=90, rows=10, seconds=9.0, attempt=9, all_inside=True), True),  # the next is the last
        (Streak(attempts=80, rows=10, seconds=8.0, attempt=8, all_inside=True), False),  # two attempts left
        (Streak(attempts=9, rows=1, seconds=9.0, attempt=9, all_inside=True), False),  # one row alone
        (Streak(attempts=18, rows=2, seconds=9.0, attempt=9, all_inside=False), False),  # failed before too
        (Streak(attempts=2, rows=2, seconds=0.1, attempt=10, all_inside=True), True),
    ],
)
def test_the_rule(streak: Streak, expected: bool) -> None:
    assert trips(streak, failures=20, seconds=20.0, max_attempts=10) is expected


def _feed(breaker: Breaker, attempts: list[tuple[int, int, APIError | None]]) -> list[bool]:
    return [breaker.observe(row, n, 200 if e is None else e.status, e) for row, n, e in attempts]


def test_an_outage_trips_before_any_row_has_one_attempt_left() -> None:
    breaker = Breaker(failures=20, seconds=20.0, max_attempts=10)
    rounds = [(row, n, DOWN) for n in range(1, 10) for row in (1, 2, 3)]
    tripped = _feed(breaker, rounds)
    assert tripped.index(True) == len(rounds) - 3  # row 1's ninth attempt
    assert _feed(breaker, [(4, 1, None)]) == [False]  # an answer ends the streak


def test_a_request_the_server_cannot_handle_fails_on_its_own() -> None:
    breaker = Breaker(failures=20, seconds=20.0, max_attempts=10)
    # Row 7 fails while others are answered; late in the batch it is the only one left, failing alone.
    attempts = [(7, 1, DOWN), (8, 1, None), (7, 2, DOWN), (9, 1, None)]
    attempts += [(7, n, DOWN) for n in range(3, 11)]
    assert not any(_feed(breaker, attempts))


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def test_503_with_retry_after_1_pauses_before_any_row_runs_out(fake: FakeServer, tmp_path: Path) -> None:
    fake.config.error_rate, fake.config.error_status, fake.config.retry_after = 1.0, 503, 1.0
    result = invoke("run", str(chat_file(tmp_path / "jobs.jsonl", 10)), "--base-url", fake.url)
    assert result.exit_code == EXIT_PAUSED, result.stderr
    batch_id = batch_of(result.stdout)
    paused = status_of(batch_id)
    assert paused["state"] == "paused" and "is not answering" in paused["pause_reason"]
    assert (paused["failed"], paused["queued"]) == (0, 10)
    db = open_database(Settings.load().db_url)
    with db.read() as s:
        per_row = s.execute(select(Request.attempts).where(Request.batch_id == batch_id)).scalars().all()
        answered_503 = s.scalar(select(Attempt.id).where(Attempt.http_status == 503).limit(1))
    assert answered_503 is not None and max(per_row) <= 9, per_row  # every row kept its last attempt

    fake.config.error_rate = 0.0  # the server is back
    result = invoke("resume", batch_id, "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    assert status_of(batch_id)["succeeded"] == 10
    assert fake.stats()["answered"] == 10
