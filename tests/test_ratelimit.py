"""Rate awareness end to end: real workers over Redis sharing one budget learned from the fake's headers, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_PAUSED
from pipeline.fakeapi import FakeServer
from tests.conftest import invoke
from tests.fault_helpers import answered_more_than_once
from tests.helpers import chat_line, write_jsonl
from tests.services import Fleet, wait_for
from tests.test_fleet import fleet_env, status, submit, wait_final

pytestmark = pytest.mark.integration


def short_chat_file(path: Path, n: int) -> Path:
    return write_jsonl(path, [chat_line(f"r{i}", f"q{i}", max_tokens=8) for i in range(n)])


#: The share of calls answered 429 a test allows. Pacing at the learned limit keeps it near 0 (0.02% at
#: 6,000 RPM on a quiet machine, bench/bench_ratelimit.py, whose target is 0.5%); a process stalled by a
#: loaded machine sends the requests granted meanwhile at once, and the fake's 1-second buckets refuse the
#: overflow (0.5-2.6% measured beside other suites). Without pacing it is most calls (88% in the same bench).
MAX_429_SHARE = 0.05


def share_429(fake: FakeServer) -> float:
    stats = fake.stats()
    return stats["by_status"].get("429", 0) / stats["received"]


def test_two_workers_learn_an_rpm_limit_and_stay_under_it(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.rpm = 6000  # enforced as 100 per 1-second bucket
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start_many(2)
    batch_id = submit(fleet, short_chat_file(tmp_path / "jobs.jsonl", 3000))
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 3000
    assert share_429(fake) <= MAX_429_SHARE, fake.stats()["by_status"]
    assert answered_more_than_once(fake) == 0
    limits = {lim["model"]: lim for lim in final["limits"]}
    assert limits["gpt-4o-mini"]["rpm"] == 6000 and limits["gpt-4o-mini"]["rpm_source"] == "learned"


def test_two_workers_stay_under_a_binding_tpm_limit(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.tpm = 90_000  # ~14 tokens per request as the fake counts them: ~107 requests per second
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start_many(2)
    batch_id = submit(fleet, short_chat_file(tmp_path / "jobs.jsonl", 2000))
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 2000
    assert share_429(fake) <= MAX_429_SHARE, fake.stats()["by_status"]
    limits = {lim["model"]: lim for lim in final["limits"]}
    assert limits["gpt-4o-mini"]["tpm"] == 90_000


def test_quota_exhaustion_pauses_the_batch_and_resume_completes_it(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.quota = 100
    fake.config.latency = 0.05
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    workers = fleet.start_many(2, "--max-in-flight", "20")
    batch_id = submit(fleet, short_chat_file(tmp_path / "jobs.jsonl", 600))
    wait_for_state(fleet, batch_id, "paused")
    paused = status(fleet, batch_id)
    assert "quota" in str(paused["pause_reason"])
    received_at_pause = fake.stats()["received"]
    for worker in workers:  # drained and gone: from the pause to here, nothing may have gone out
        assert worker.terminate(timeout=60) == 0, worker.output()
    after_errors = fake.stats()["by_status"].get("429", 0)
    assert fake.stats()["received"] == received_at_pause, "requests kept going out after the pause"
    assert after_errors <= 2 * 20, "more quota errors than requests in flight"
    assert paused["succeeded"] == 100 and paused["failed"] == 0
    fake.config.quota = None
    fleet.start_many(2, "--max-in-flight", "20")
    fleet.cli("resume", batch_id)
    final = wait_final(fleet, batch_id, 60)
    assert final["succeeded"] == 600 and final["state"] == "completed"
    assert answered_more_than_once(fake) == 0


def test_quota_pause_in_process_run_then_resume(
    fake: FakeServer, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    fake.config.quota = 50
    path = short_chat_file(tmp_path / "jobs.jsonl", 200)
    result = invoke("run", str(path), "--base-url", fake.url, "--max-in-flight", "10")
    assert result.exit_code == EXIT_PAUSED
    batch_id = result.stdout.split()[-1]
    assert f"pipeline resume {batch_id}" in result.stderr
    report = orjson.loads(invoke("status", batch_id, "--json").stdout)
    assert report["state"] == "paused" and report["succeeded"] == 50 and report["queued"] == 150
    assert fake.stats()["by_status"]["429"] <= 10
    fake.config.quota = None
    result = invoke("resume", batch_id, "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    report = orjson.loads(invoke("status", batch_id, "--json").stdout)
    assert report["succeeded"] == 200 and report["state"] == "completed"
    assert answered_more_than_once(fake) == 0


def wait_for_state(fleet: Fleet, batch_id: str, state: str, timeout: float = 60) -> None:
    wait_for(lambda: status(fleet, batch_id)["state"] == state, timeout, interval=0.5)
