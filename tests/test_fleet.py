"""Broker mode with real processes: `pipeline worker` over real Redis, SQLite and PostgreSQL, the fake API.

Every test is bounded: workers are killed at the end whatever happens, waits have deadlines.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY
from tests.fault_helpers import (
    answered_more_than_once,
    at_stake_of,
    at_stake_of_faults,
    caught_in_flight,
    sent_by,
)
from tests.helpers import chat_file, chat_line, write_jsonl
from tests.services import Fleet, free_port, start_redis, wait_for

pytestmark = pytest.mark.integration


def fleet_env(fake: FakeServer, database_url: str, broker_url: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_BROKER_URL": broker_url,
        "PIPELINE_LEASE_SECONDS": "4",
        "PIPELINE_CHUNK_SIZE": "100",
        "PIPELINE_TIMEOUT": "10",
    }


def status(fleet: Fleet, batch_id: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(fleet.cli("status", batch_id, "--json").stdout)
    return result


def wait_final(fleet: Fleet, batch_id: str, timeout: float) -> dict[str, Any]:
    def final() -> bool:
        s = status(fleet, batch_id)
        return s["succeeded"] + s["failed"] + s["cancelled"] == s["total"]

    wait_for(final, timeout, interval=0.5)
    return status(fleet, batch_id)


def wait_state(fleet: Fleet, batch_id: str, state: str, timeout: float) -> dict[str, Any]:
    """The batch's status once it is in `state` (a batch moves to completed or cancelled just after the
    write that finished its last rows)."""
    wait_for(lambda: status(fleet, batch_id)["state"] == state, timeout, interval=0.5)
    return status(fleet, batch_id)


def submit(fleet: Fleet, path: Path, *args: str) -> str:
    return fleet.cli("submit", str(path), *args).stdout.strip().splitlines()[-1]


def test_two_workers_2000_requests_each_succeeds_exactly_once(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start_many(2, "--max-in-flight", "200")
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 2000))
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 2000 and final["attempts"] == 2000
    stats = fake.stats()
    assert stats["answered"] == 2000 and len(stats["bodies"]) == 2000
    assert answered_more_than_once(fake) == 0
    assert all("database is locked" not in w.output() for w in fleet.workers)


def test_sigkill_a_worker_mid_batch_and_the_batch_still_completes(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    tags = [{"OPENAI_PROJECT_ID": name} for name in ("victim", "survivor")]
    victim, survivor = fleet.start_many(2, "--max-in-flight", "100", envs=tags)
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1500))
    wait_for(lambda: fake.stats()["answered"] >= 400 and sent_by(fake, "victim") >= 200, 60)
    with caught_in_flight(fake, database_url, "victim", victim.proc.pid):
        victim.kill()
    replacement = fleet.start("--max-in-flight", "100", env={"OPENAI_PROJECT_ID": "replacement"})
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 1500 and final["total"] == 1500
    others = [("survivor", survivor), ("replacement", replacement)]
    at_stake = at_stake_of_faults(fake, database_url, [("victim", victim)], others)  # read after the kill
    repeats = answered_more_than_once(fake)
    print(f"worker killed: {repeats} answered twice, {at_stake} at stake")
    assert at_stake_of(fake, database_url, "victim", victim.proc.pid) >= 10  # killed with requests in flight
    assert repeats <= at_stake, (repeats, at_stake)
    assert len(fake.stats()["bodies"]) == 1500


def test_redis_restart_mid_batch_workers_reconnect_and_finish(
    fake: FakeServer, make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    port = free_port()
    server = start_redis(port)
    try:
        fake.config.latency = 0.2
        fleet = make_fleet(**fleet_env(fake, f"sqlite:///{tmp_path / 'r.db'}", f"redis://127.0.0.1:{port}/0"))
        worker = fleet.start("--max-in-flight", "50", "--concurrency", "1")
        batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1000))
        wait_for(lambda: fake.stats()["answered"] >= 200, 60)
        server.send_signal(signal.SIGTERM)  # no persistence: the queued messages are lost with it
        server.wait(timeout=10)
        wait_for(lambda: "Connection to broker lost" in worker.output(), 30)  # the worker saw it go
        server = start_redis(port)
        final = wait_final(fleet, batch_id, 120)
        assert final["succeeded"] == 1000
        assert answered_more_than_once(fake) == 0
    finally:
        server.kill()
        server.wait(timeout=10)


def test_cancel_mid_batch_stops_all_sending(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    worker = fleet.start("--max-in-flight", "50")
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 2000))
    wait_for(lambda: fake.stats()["answered"] >= 100, 60)
    fleet.cli("cancel", batch_id)
    final = wait_state(fleet, batch_id, "cancelled", 60)  # rows in flight finish, the others are cancelled
    received = fake.stats()["received"]
    assert worker.terminate(timeout=60) == 0, worker.output()  # nothing can be sent after this
    assert final["cancelled"] > 0
    assert final["running"] == final["queued"] == 0
    assert final["succeeded"] + final["cancelled"] == 2000
    # Nothing went out once the batch was final, and every answer belongs to a row that succeeded: no
    # cancelled row was sent.
    assert fake.stats()["received"] == received
    assert fake.stats()["answered"] == final["succeeded"] == status(fleet, batch_id)["succeeded"]


def test_retry_resends_failed_rows_only(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    lines = [chat_line(f"ok-{i}", f"fine {i}") for i in range(30)]
    lines += [chat_line(f"bad-{i}", f'fake:{{"status": 400, "message": "bad {i}"}}') for i in range(10)]
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start()
    batch_id = submit(fleet, write_jsonl(tmp_path / "jobs.jsonl", lines))
    first = wait_final(fleet, batch_id, 60)
    assert (first["succeeded"], first["failed"]) == (30, 10)
    fleet.cli("retry", batch_id)
    wait_for(lambda: fake.stats()["received"] == 50, 60)
    final = wait_final(fleet, batch_id, 60)
    assert (final["succeeded"], final["failed"]) == (30, 10)
    received = sorted(entry["received"] for entry in fake.stats()["bodies"].values())
    assert received == [1] * 30 + [2] * 10


def test_sigterm_drains_and_leaves_nothing_running(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.latency = 0.5
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    worker = fleet.start("--max-in-flight", "50")
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1000))
    wait_for(lambda: fake.stats()["answered"] >= 100, 60)
    assert worker.terminate(timeout=60) == 0, worker.output()
    after = status(fleet, batch_id)
    assert after["running"] == 0
    assert after["queued"] > 0 and after["succeeded"] == fake.stats()["answered"]
    fleet.start("--max-in-flight", "100")
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 1000
    assert answered_more_than_once(fake) == 0


def test_submitting_the_same_file_twice_is_recognised(
    fake: FakeServer, make_fleet: Callable[..., Fleet], redis_url: str, tmp_path: Path
) -> None:
    fleet = make_fleet(**fleet_env(fake, f"sqlite:///{tmp_path / 'd.db'}", redis_url))
    path = chat_file(tmp_path / "jobs.jsonl", 10)
    first = submit(fleet, path)
    again = fleet.cli("submit", str(path))
    assert again.stdout.strip() == first and "already submitted" in again.stderr
    assert submit(fleet, path, "--force") != first


def test_filesystem_transport_needs_no_server(
    fake: FakeServer, make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    env = fleet_env(fake, f"sqlite:///{tmp_path / 'fs.db'}", "")
    del env["PIPELINE_BROKER_URL"]
    fleet = make_fleet(**env)
    fleet.start_many(2)
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 300))
    assert wait_final(fleet, batch_id, 60)["succeeded"] == 300


def test_unreachable_broker_and_database_give_one_clear_line(
    make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    port = free_port()
    fleet = make_fleet(OPENAI_API_KEY=TEST_KEY, PIPELINE_BROKER_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    done = fleet.cli("submit", str(chat_file(tmp_path / "jobs.jsonl", 3)), check=False)
    assert done.returncode == 1
    assert f"cannot reach broker redis://:***@127.0.0.1:{port}/0" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    db_url = f"postgresql+psycopg://u:hunter2@127.0.0.1:{port}/x"
    done = fleet.cli("status", "--database-url", db_url, check=False)
    assert done.returncode == 1
    assert f"cannot reach database postgresql+psycopg://u:***@127.0.0.1:{port}/x" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
