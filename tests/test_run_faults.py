"""`pipeline run` processes meeting faults: SIGTERM, and Redis (their shared limiter) down for longer than a
lease. Real processes, on SQLite and PostgreSQL; what the fake received bounds what was sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from pipeline.cli.exits import EXIT_TERMINATED
from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database
from pipeline.store.models import Batch, Request, RequestStatus
from tests.conftest import TEST_KEY
from tests.fault_helpers import answered_more_than_once, at_stake_in_all, stored_successes
from tests.helpers import chat_file
from tests.services import free_port, start_redis, wait_for

pytestmark = pytest.mark.integration

SUCCEEDED = RequestStatus.SUCCEEDED
#: Seconds of silence after which an engine counts as dead: short enough for an outage of 2.5 leases to
#: pass quickly, long enough that a loaded machine never stalls a beat that long.
LEASE = 6.0


class Runs:
    """`pipeline run` processes with one environment, each its stderr in a file; killed at the end."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self, path: Path, *args: str) -> subprocess.Popen[str]:
        log = self.tmp / f"run-{len(self.procs)}.err"
        command = [sys.executable, "-m", "pipeline", "run", str(path), "--max-in-flight", "50", *args]
        with open(log, "w") as err:
            proc = subprocess.Popen(
                command, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
            )
        self.procs.append((proc, log))
        return proc

    def stderr(self, proc: subprocess.Popen[str]) -> str:
        return next(log for p, log in self.procs if p is proc).read_text()

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


@pytest.fixture
def runs(fake: FakeServer, database_url: str, tmp_path: Path) -> Iterator[Runs]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_LEASE_SECONDS": str(LEASE),
    }
    started = Runs(env, tmp_path)
    yield started
    started.stop_all()


def test_sigterm_drains_exits_143_and_the_same_command_finishes(
    fake: FakeServer, database_url: str, runs: Runs, tmp_path: Path
) -> None:
    fake.config.latency = 0.5
    path = chat_file(tmp_path / "jobs.jsonl", 1000)
    proc = runs.start(path)
    wait_for(lambda: fake.stats()["answered"] >= 100 and fake.stats()["in_flight"] >= 20, 60)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    err = runs.stderr(proc)
    assert proc.returncode == EXIT_TERMINATED == 143, err
    assert "SIGTERM: finishing the requests in flight" in err and "Traceback" not in err
    rows = rows_by_status(database_url, out.split()[-1])
    # Drained: the answers to what was in flight were stored, every other row is queued again.
    assert rows.get(RequestStatus.RUNNING, 0) == 0 and rows[RequestStatus.QUEUED] > 0
    assert rows[RequestStatus.SUCCEEDED] == fake.stats()["answered"] == stored_successes(database_url)
    at_stake = at_stake_in_all(fake, database_url)  # after it exited: anything sent and not stored

    again = runs.start(path)
    again.communicate(timeout=120)
    assert again.returncode == 0, runs.stderr(again)
    assert rows_by_status(database_url, out.split()[-1]) == {RequestStatus.SUCCEEDED: 1000}
    repeats = answered_more_than_once(fake)
    print(f"run terminated: {repeats} answered twice, {at_stake} at stake after the drain")
    assert repeats <= at_stake, (repeats, at_stake)


def test_redis_down_longer_than_a_lease_under_two_runs_sharing_its_limiter(
    fake: FakeServer, database_url: str, runs: Runs, tmp_path: Path
) -> None:
    fake.config.rpm, fake.config.latency = 6000, 0.2  # every request waits for the shared budget in Redis
    port = free_port()
    server = start_redis(port)
    runs.env["PIPELINE_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        paths = [chat_file(tmp_path / f"{name}.jsonl", 1500, name) for name in ("one", "two")]
        procs = [runs.start(path) for path in paths]
        wait_for(lambda: min(stored_by_batch(database_url, paths), default=0) >= 100, 60)  # both sending
        stored_before = stored_successes(database_url)
        held_before = rows_of_engines(database_url, RequestStatus.RUNNING)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        stopped = time.monotonic()
        wait_until(stopped + 1.5 * LEASE)  # what it sent once its budget could no longer be read has landed
        received_by_then = fake.stats()["received"]
        wait_until(stopped + 2.5 * LEASE)
        received_in_outage = fake.stats()["received"]
        held_after = rows_of_engines(database_url, RequestStatus.RUNNING, RequestStatus.SUCCEEDED)
        server = start_redis(port)
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        server.kill()
        server.wait(timeout=10)

    assert [proc.returncode for proc in procs] == [0, 0], [runs.stderr(proc) for proc in procs]
    for out in outputs:
        assert rows_by_status(database_url, out.split()[-1]) == {RequestStatus.SUCCEEDED: 1500}
    assert received_in_outage == received_by_then, "requests went out without the shared budget"
    # Both kept their rows: every row one of them held when Redis went is, a lease and more later, still
    # held by the same engine or stored by it (neither was taken for dead: their beats are the database's).
    assert held_before and all(held_after.get(row) == who for row, who in held_before.items())
    assert not any("is dead" in runs.stderr(p) or "declared dead" in runs.stderr(p) for p in procs)
    at_stake = received_in_outage - stored_before  # sent before Redis came back, not stored before it went
    repeats = answered_more_than_once(fake)
    print(f"redis down: {repeats} answered twice, {at_stake} at stake")
    assert repeats <= at_stake, (repeats, at_stake)


def wait_until(moment: float) -> None:
    """Let a fault last until `moment` (time.monotonic()): its length is the test's subject."""
    time.sleep(max(0.0, moment - time.monotonic()))


def rows_by_status(database_url: str, batch_id: str) -> dict[RequestStatus, int]:
    db = Database(database_url)
    try:
        with db.read() as s:
            statuses = s.scalars(select(Request.status).where(Request.batch_id == batch_id)).all()
    finally:
        db.engine.dispose()
    counts: dict[RequestStatus, int] = {}
    for status in statuses:
        counts[RequestStatus(status)] = counts.get(RequestStatus(status), 0) + 1
    return counts


def stored_by_batch(database_url: str, paths: list[Path]) -> list[int]:
    """Stored successes of the batch of each job file (by its path); [] until every file has a batch (or
    while the runs are still making the schema)."""
    db = Database(database_url)
    try:
        with db.read() as s:
            if not inspect(s.connection()).has_table("requests"):
                return []
            counts = dict(
                s.execute(
                    select(Batch.source, func.count(Request.id))
                    .outerjoin(
                        Request, (Request.batch_id == Batch.id) & (Request.status == RequestStatus.SUCCEEDED)
                    )
                    .group_by(Batch.source)
                ).all()
            )
    finally:
        db.engine.dispose()
    return [counts[str(path)] for path in paths] if all(str(p) in counts for p in paths) else []


def rows_of_engines(database_url: str, *statuses: RequestStatus) -> dict[int, str | None]:
    """Rows in `statuses`: id -> the engine holding it (running) or that stored it (final)."""
    db = Database(database_url)
    try:
        with db.read() as s:
            rows = s.execute(select(Request.id, Request.worker).where(Request.status.in_(statuses))).all()
    finally:
        db.engine.dispose()
    return {rid: worker for rid, worker in rows}
