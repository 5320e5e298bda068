"""Nothing lost, nothing paid twice, nothing stuck: the faults a fleet meets, with real processes.

Every test counts what the fake API received: a request answered twice is paid twice, and that number must
stay within what was in flight when the fault struck. Store-touching tests run on SQLite and PostgreSQL
(`database_url`): PostgreSQL refuses over-long values and NUL characters, SQLite takes both.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Batch, Request, Result
from tests.conftest import TEST_KEY, invoke
from tests.fault_helpers import (
    answered_more_than_once,
    at_stake_in_all,
    at_stake_of,
    at_stake_of_faults,
    burials_of,
    caught_in_flight,
    pause_holding_no_lock,
    sent_by,
    stored_successes,
    tagged,
)
from tests.helpers import chat_file, chat_line, write_jsonl
from tests.services import Fleet, PostgresServer, Worker, wait_for
from tests.test_fleet import fleet_env, status, submit, wait_final

pytestmark = pytest.mark.integration


def directive(**how: Any) -> str:
    """A message that tells the fake how to answer it (pipeline/fakeapi/__init__.py)."""
    return "fake:" + orjson.dumps(how).decode()


def rows_of(database_url: str, batch_id: str) -> dict[str, tuple[Request, Result | None, list[Attempt]]]:
    """custom_id -> (request row, result row, attempt rows) of the batch."""
    db = Database(database_url)
    try:
        with db.read() as s:
            pairs = s.execute(
                select(Request, Result)
                .outerjoin(Result, Result.request_id == Request.id)
                .where(Request.batch_id == batch_id)
            ).all()
            attempts: dict[int, list[Attempt]] = {}
            for attempt in s.scalars(select(Attempt).join(Request).where(Request.batch_id == batch_id)):
                attempts.setdefault(attempt.request_id, []).append(attempt)
        return {req.custom_id: (req, res, attempts.get(req.id, [])) for req, res in pairs}
    finally:
        db.engine.dispose()


def assert_books_balance(database_url: str, batch_id: str) -> None:
    """Each row's attempts counter equals its attempt rows, no row has two successful attempts, and a
    result is the answer of the row's own successful attempt (never one written by a non-owner)."""
    for custom_id, (req, res, attempts) in rows_of(database_url, batch_id).items():
        assert req.attempts == len(attempts), custom_id
        ok = [a for a in attempts if a.http_status in range(200, 300) and not a.error_type]
        assert len(ok) <= 1, custom_id
        if res is not None and ok:
            assert res.x_request_id == ok[0].x_request_id, custom_id


def test_poison_outcomes_never_block_the_others(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    poison = [
        chat_line("n60", "sixty choices", n=60),
        chat_line("nul", directive(content="before\u0000after")),
        chat_line("long-model", directive(model="m" * 300)),
        chat_line("long-request-id", directive(request_id="r" * 300)),
        chat_line("long-code", directive(status=400, code="c" * 200, message="refused")),
    ]
    lines = [chat_line(f"req-{i}", f"question {i}") for i in range(295)]
    for i, line in enumerate(poison):  # spread over the batch, so they share transactions with others
        lines.insert(60 * i + 30, line)
    fake.config.latency = 0.05
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    workers = fleet.start_many(2, "--max-in-flight", "50")
    batch_id = submit(fleet, write_jsonl(tmp_path / "jobs.jsonl", lines))
    final = wait_final(fleet, batch_id, 90)

    assert (final["succeeded"], final["failed"], final["running"]) == (299, 1, 0)
    bodies = fake.stats()["bodies"]
    assert len(bodies) == 300 and all(entry["received"] == 1 for entry in bodies.values())
    rows = rows_of(database_url, batch_id)
    assert rows["nul"][1] is not None and rows["nul"][1].output == "before\ufffdafter"
    assert rows["long-model"][1] is not None and rows["long-model"][1].model == "m" * 128
    assert rows["long-request-id"][2][0].x_request_id == "r" * 128
    assert rows["long-code"][0].error_type == "c" * 64 and rows["long-code"][0].status == "failed"
    n60 = rows["n60"][1]
    assert n60 is not None and n60.finish_reasons is not None and n60.finish_reasons.count("|") == 59
    assert_books_balance(database_url, batch_id)
    for worker in workers:
        assert worker.terminate(timeout=60) == 0, worker.output()


def test_a_value_the_database_refuses_fails_only_its_own_row(
    fake: FakeServer, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Fitting disabled, a token count no INTEGER column holds reaches the database, which refuses it (SQLite:
    OverflowError, PostgreSQL: integer out of range). The writer splits its transaction until that outcome is
    alone, stores it as failed, and stores every other one."""
    from pipeline.store import claims

    real_write = claims._write

    def write_with_a_huge_count(s: Any, outcomes: Any, sqlite: bool) -> None:
        for outcome in outcomes:
            if outcome.result is not None and outcome.result.get("output") == "echo: req question 7":
                outcome.result["prompt_tokens"] = 2**70
        real_write(s, outcomes, sqlite)

    monkeypatch.setattr(claims, "_write", write_with_a_huge_count)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    result = invoke("run", str(chat_file(tmp_path / "jobs.jsonl", 40)), "--base-url", fake.url)
    assert result.exit_code == 3, result.stderr
    batch_id = result.stdout.split()[-1]
    rows = rows_of(database_url, batch_id)
    failed = {cid for cid, (req, _, _) in rows.items() if req.status == "failed"}
    assert failed == {"req-7"}
    assert rows["req-7"][0].error_type == "unstorable"
    assert all(req.status == "succeeded" for cid, (req, _, _) in rows.items() if cid != "req-7")
    assert fake.stats()["received"] == 40


def test_a_worker_paused_past_its_lease_sends_and_writes_nothing_it_lost(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    fake.config.latency = 0.2
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    tag = {"OPENAI_PROJECT_ID": "paused", "PIPELINE_DATABASE_URL": tagged(database_url, "paused")}
    paused, other = fleet.start_many(2, "--max-in-flight", "50", envs=[tag, {"OPENAI_PROJECT_ID": "other"}])
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1500))
    wait_for(lambda: fake.stats()["answered"] >= 200 and sent_by(fake, "paused") >= 100, 60)
    buried, told = burials_of(other, paused), paused.output().count("declared dead")
    with caught_in_flight(fake, database_url, "paused", paused.proc.pid):
        pause_holding_no_lock(paused, database_url, "paused")  # so nothing keeps the other from burying it
    # A lease of silence: the other buries it. Then its next beat finds out and says so.
    wait_for(lambda: burials_of(other, paused) > buried, 60, explain=lambda: other.output()[-3000:])
    paused.resume()
    wait_for(
        lambda: paused.output().count("declared dead") > told, 30, explain=lambda: paused.output()[-3000:]
    )
    final = wait_final(fleet, batch_id, 120)

    assert final["succeeded"] == 1500 and final["running"] == 0
    at_stake = at_stake_of_faults(fake, database_url, [("paused", paused)], [("other", other)])
    repeats = answered_more_than_once(fake)
    print(f"paused past the lease: {repeats} answered twice, {at_stake} at stake")
    assert at_stake_of(fake, database_url, "paused", paused.proc.pid) >= 10  # paused with requests in flight
    assert repeats <= at_stake, (repeats, at_stake)
    assert_books_balance(database_url, batch_id)


@pytest.mark.parametrize("skew", ["+60s", "-60s"])
def test_a_worker_whose_clock_is_a_minute_off_takes_nothing_from_the_others(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    skew: str,
) -> None:
    """A minute ahead or a minute behind the others (libfaketime): no wall clock is compared across
    processes, so neither buries the other nor sends anything twice."""
    fake.config.latency = 0.2
    # A lease long enough that a loaded machine never stalls a beat that long: any burial here would be the
    # skew's doing (a minute either way is six leases).
    fleet = make_fleet(**{**fleet_env(fake, database_url, redis_url), "PIPELINE_LEASE_SECONDS": "10"})
    tag = {"OPENAI_PROJECT_ID": "skewed"}
    skewed = fleet.start("--max-in-flight", "50", prefix=("faketime", "-f", skew), env=tag)
    normal = fleet.start("--max-in-flight", "50")
    # Its clock is off: the time it logged being ready is a minute away from the other's (less the seconds
    # between their starts).
    offset = (ready_at(skewed) - ready_at(normal)).total_seconds()
    assert int(skew[:-1]) - 40 < offset <= int(skew[:-1]) + 1, offset
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1500))
    final = wait_final(fleet, batch_id, 120)

    assert final["succeeded"] == 1500
    assert answered_more_than_once(fake) == 0  # nothing died: nothing may be sent twice
    assert all("is dead" not in w.output() and "declared dead" not in w.output() for w in fleet.workers)
    assert skewed.proc.poll() is None and sent_by(fake, "skewed") > 0  # it took its part
    assert_books_balance(database_url, batch_id)


def ready_at(worker: Worker) -> datetime:
    """When the worker logged that it was ready, by its own clock (Celery's log lines start with it)."""
    found = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: .*ready\.$", worker.output(), re.M)
    assert found, worker.output()
    return datetime.fromisoformat(found.group(1))


BAD_BODIES = ("empty", "truncated", "html", "empty_object", "error", "not_json")


def test_a_2xx_that_is_not_an_answer_never_counts_as_success(
    fake: FakeServer, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lines = [chat_line(f"always-{kind}", directive(body=kind)) for kind in BAD_BODIES]
    lines += [chat_line(f"once-{kind}", directive(body=kind, times=1)) for kind in BAD_BODIES]
    lines.append(chat_line("huge", directive(pad=3_000_000)))
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    monkeypatch.setenv("PIPELINE_MAX_RESPONSE_BYTES", "1000000")
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    result = invoke("run", str(path), "--base-url", fake.url, "--max-attempts", "3")
    assert result.exit_code == 3, result.stderr
    rows = rows_of(database_url, result.stdout.split()[-1])

    for kind in BAD_BODIES:
        req, res, attempts = rows[f"always-{kind}"]
        assert (req.status, req.error_type, req.attempts) == ("failed", "bad_response", 3), kind
        assert all(a.error_type == "bad_response" and a.http_status == 200 for a in attempts), kind
        req, res, attempts = rows[f"once-{kind}"]
        assert (req.status, req.attempts) == ("succeeded", 2), kind
        assert res is not None and res.output == f"echo: {directive(body=kind, times=1)}", kind
    req, res, attempts = rows["huge"]
    assert (req.status, req.error_type, req.attempts) == ("failed", "response_too_large", 1)


def test_concurrent_submits_of_one_file_make_one_batch(
    make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fleet = make_fleet(
        OPENAI_API_KEY=TEST_KEY, PIPELINE_DATABASE_URL=database_url, PIPELINE_BROKER_URL=redis_url
    )
    fleet.cli("db", "upgrade")
    for trial in range(10):
        path = chat_file(tmp_path / f"jobs-{trial}.jsonl", 200, prefix=f"t{trial}")
        command = [sys.executable, "-m", "pipeline", "submit", str(path)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs = [subprocess.Popen(command, env=fleet.env, **pipes) for _ in range(2)]  # type: ignore[call-overload]
        outputs = [proc.communicate(timeout=120) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        ids = {out.strip().splitlines()[-1] for out, _ in outputs}
        assert len(ids) == 1, (trial, outputs)
    db = Database(database_url)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 10
        assert s.scalar(select(func.count()).select_from(Request)) == 2000
    db.engine.dispose()


def test_pipeline_run_killed_then_run_again_takes_over_at_once(
    fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    """The lease is ten minutes: finishing within the rerun's time limit means it did not wait for it."""
    fake.config.latency = 0.2
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_LEASE_SECONDS": "600",
    }
    command = [sys.executable, "-m", "pipeline", "run", str(chat_file(tmp_path / "jobs.jsonl", 2000))]
    command += ["--max-in-flight", "100"]
    first = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: fake.stats()["answered"] >= 300, 60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    wait_for(lambda: fake.stats()["in_flight"] == 0, 30)  # the fake finishes what the dead process sent
    in_flight_at_kill = at_stake_in_all(fake, database_url)  # the only process sending, read after
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    batch_id = again.stdout.split()[-1]
    rows = rows_of(database_url, batch_id)
    assert all(req.status == "succeeded" for req, _, _ in rows.values()) and len(rows) == 2000
    repeats = answered_more_than_once(fake)
    print(f"run killed and rerun: {repeats} answered twice, {in_flight_at_kill} in flight at the kill")
    assert repeats <= in_flight_at_kill, (repeats, in_flight_at_kill)
    assert_books_balance(database_url, batch_id)


def test_postgres_down_longer_than_the_lease(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    postgres_url: str,
    postgres_server: PostgresServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    fake.config.latency = 0.2
    env = fleet_env(fake, postgres_url, redis_url)
    lease = float(env["PIPELINE_LEASE_SECONDS"])
    fleet = make_fleet(**env)
    workers = fleet.start_many(2, "--max-in-flight", "50")
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1500))
    wait_for(lambda: fake.stats()["answered"] >= 200, 60)
    # Every worker is at fault. Stored is read just before the stop and can only have grown by the stop, so
    # the figure below can only be larger than what was truly at stake (never a false failure).
    stored_before = stored_successes(postgres_url)
    postgres_server.stop()
    stopped = time.monotonic()
    # Nothing can be stored now: the engines' beats fail and they stop sending within 3/4 of a lease.
    # Read what was sent once 1.5 leases have passed, then again when the outage has lasted 2.5 leases.
    wait_until(stopped + 1.5 * lease)
    sent_by_then = fake.stats()["received"]
    wait_until(stopped + 2.5 * lease)
    sent_in_outage = fake.stats()["received"]
    postgres_server.start()
    final = wait_final(fleet, batch_id, 180)

    assert final["succeeded"] == 1500 and final["running"] == 0
    at_stake = sent_in_outage - stored_before  # everything sent before it returned, less what was stored
    repeats = answered_more_than_once(fake)
    print(f"postgres down: {repeats} answered twice, {at_stake} at stake, {sent_in_outage} sent by then")
    assert repeats <= at_stake, (repeats, at_stake)
    assert sent_in_outage == sent_by_then, "requests kept going out while nothing could be stored"
    assert_books_balance(postgres_url, batch_id)
    for worker in workers:
        assert worker.terminate(timeout=60) == 0, worker.output()
    assert status(fleet, batch_id)["running"] == 0


def wait_until(moment: float) -> None:
    """Let a fault last until `moment` (time.monotonic()): its length is the test's subject, not a wait for
    something to happen."""
    time.sleep(max(0.0, moment - time.monotonic()))
