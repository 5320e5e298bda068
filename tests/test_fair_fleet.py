"""Fair share with real processes: batches sharing one key share its budget, in every mode.

The fake enforces its limit in 1-second buckets; workers and `pipeline run` processes learn it from its
headers. Send rates are read from the attempts the engines stored (their start times),
completion times from the batches' own rows; every wait has a deadline and every process is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.fakeapi import FakeServer
from tests.fair_helpers import both_running_rates, short_chat_file
from tests.fault_helpers import (
    answered_more_than_once,
    at_stake_of,
    at_stake_of_faults,
    caught_in_flight,
    sent_by,
)
from tests.services import Fleet, wait_for
from tests.test_fleet import fleet_env, status, submit, wait_final, wait_state
from tests.test_ratelimit import MAX_429_SHARE, share_429

pytestmark = pytest.mark.integration

#: The fake's limit: 100 requests per second.
RPM = 6000
#: The limit where shares are compared: 20 requests per second, so that the budget binds even when the
#: machine is loaded. Fair share is work-conserving: a process too starved of CPU to send its share leaves
#: the rest to the other, which is right, and shows as a ratio below 3 at 100 per second (measured 1.3-1.7
#: beside other suites: bench/RESULTS.md).
SHARED_RPM = 1200


def test_a_small_batch_submitted_after_a_big_one_finishes_first(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.rpm, fake.config.latency = RPM, 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start_many(2)
    big = submit(fleet, short_chat_file(tmp_path / "big.jsonl", 3000, "big"))
    wait_for(lambda: fake.stats()["answered"] >= 200, 60)  # the big batch is sending
    small = submit(fleet, short_chat_file(tmp_path / "small.jsonl", 300, "small"))
    small_final = wait_state(fleet, small, "completed", 60)
    big_final = wait_state(fleet, big, "completed", 120)
    assert (small_final["succeeded"], big_final["succeeded"]) == (300, 3000)
    # Submitted 10 times smaller while the big one had most of its rows left, it was done first: it was not
    # queued behind the big one's rows (the throughput of the pair is in bench/bench_fairfleet.py).
    assert finished_at(small_final) < finished_at(big_final), (small_final, big_final)
    assert answered_more_than_once(fake) == 0


def finished_at(report: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(report["finished_at"])


def assert_three_to_one(database_url: str, high: str, low: str) -> None:
    """While both sent, the priority-3 batch sent 3 times as many requests as the priority-1 one, within
    20% (counts over the same window: a ratio, whatever the machine's speed). The first and last 5 s of
    that time are left out: rows claimed before the other batch came (or after it ran out) are sent then,
    which is the ramp, not the share (with the filesystem broker it measured 2.0-2.4 for 8 s)."""
    fast, slow, seconds = both_running_rates(database_url, high, low, margin=5.0)
    ratio = fast / slow
    print(f"priority 3: {fast:.1f}/s, priority 1: {slow:.1f}/s, ratio {ratio:.2f} over {seconds:.0f}s")
    assert 0.8 * 3 <= ratio <= 1.2 * 3, (fast, slow, seconds)


def test_priorities_3_and_1_share_a_fleet_3_to_1(
    fake: FakeServer, make_fleet: Callable[..., Fleet], redis_url: str, tmp_path: Path
) -> None:
    fake.config.rpm, fake.config.latency = SHARED_RPM, 0.3
    database_url = f"sqlite:///{tmp_path / 'prio.db'}"
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    fleet.start_many(2)
    low = submit(fleet, short_chat_file(tmp_path / "low.jsonl", 600, "low"), "--priority", "1")
    high = submit(fleet, short_chat_file(tmp_path / "high.jsonl", 900, "high"), "--priority", "3")
    shares: list[float | None] = []

    def status_shows_the_shares() -> bool:  # engines save 10 s averages every 5 s: they converge
        shares[:] = [status(fleet, batch)["share"] for batch in (high, low)]
        high_share, low_share = shares
        return (
            high_share is not None
            and low_share is not None
            and 0.65 <= high_share <= 0.85
            and 0.15 <= low_share <= 0.35
        )

    # High has 60 s of work at its share: the averages have time to settle on a loaded machine.
    wait_for(status_shows_the_shares, 50, interval=1.0, explain=lambda: f"shares shown {shares}")
    assert wait_final(fleet, high, 120)["succeeded"] == 900
    assert wait_final(fleet, low, 120)["succeeded"] == 600
    assert_three_to_one(database_url, high, low)


def test_two_run_processes_sharing_a_redis_limiter_share_3_to_1(
    fake: FakeServer, make_fleet: Callable[..., Fleet], redis_url: str, tmp_path: Path
) -> None:
    fake.config.rpm, fake.config.latency = SHARED_RPM, 0.3
    database_url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**fleet_env(fake, database_url, redis_url), "PIPELINE_REDIS_URL": redis_url}
    del env["PIPELINE_BROKER_URL"]
    fleet = make_fleet(**env)
    runs = [
        start_run(fleet, short_chat_file(tmp_path / "high.jsonl", 600, "high"), "3"),
        start_run(fleet, short_chat_file(tmp_path / "low.jsonl", 400, "low"), "1"),
    ]
    try:
        outputs = [proc.communicate(timeout=120) for proc in runs]
    finally:
        for proc in runs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [proc.returncode for proc in runs] == [0, 0], outputs
    high, low = (out.strip().splitlines()[-1] for out, _ in outputs)
    assert_three_to_one(database_url, high, low)
    assert share_429(fake) <= MAX_429_SHARE, fake.stats()["by_status"]


def start_run(fleet: Fleet, path: Path, priority: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--priority", priority],
        env=fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_filesystem_broker_workers_share_3_to_1(
    fake: FakeServer, make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    fake.config.rpm, fake.config.latency = SHARED_RPM, 0.3
    database_url = f"sqlite:///{tmp_path / 'fs.db'}"
    env = fleet_env(fake, database_url, "")
    del env["PIPELINE_BROKER_URL"]
    fleet = make_fleet(**env)
    # Without Redis each worker paces itself (documented): each is given its half of the budget.
    fleet.start_many(2, "--rpm", str(SHARED_RPM // 2))
    low = submit(fleet, short_chat_file(tmp_path / "low.jsonl", 400, "low"), "--priority", "1")
    high = submit(fleet, short_chat_file(tmp_path / "high.jsonl", 600, "high"), "--priority", "3")
    assert wait_final(fleet, high, 120)["succeeded"] == 600
    assert wait_final(fleet, low, 120)["succeeded"] == 400
    assert_three_to_one(database_url, high, low)


def test_sigkill_a_worker_with_two_batches_running_loses_nothing(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.latency = 0.3
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    tags = [{"OPENAI_PROJECT_ID": name} for name in ("victim", "survivor")]
    victim, survivor = fleet.start_many(2, "--max-in-flight", "100", envs=tags)
    first = submit(fleet, short_chat_file(tmp_path / "a.jsonl", 1200, "a"))
    second = submit(fleet, short_chat_file(tmp_path / "b.jsonl", 1200, "b"), "--priority", "2")
    wait_for(lambda: fake.stats()["answered"] >= 600 and sent_by(fake, "victim") >= 200, 60)
    with caught_in_flight(fake, database_url, "victim", victim.proc.pid):
        victim.kill()
    replacement = fleet.start("--max-in-flight", "100", env={"OPENAI_PROJECT_ID": "replacement"})
    assert wait_final(fleet, first, 120)["succeeded"] == 1200
    assert wait_final(fleet, second, 120)["succeeded"] == 1200
    others = [("survivor", survivor), ("replacement", replacement)]
    at_stake = at_stake_of_faults(fake, database_url, [("victim", victim)], others)  # read after the kill
    repeats = answered_more_than_once(fake)
    print(f"worker killed: {repeats} answered twice, {at_stake} at stake")
    assert at_stake_of(fake, database_url, "victim", victim.proc.pid) >= 10  # killed with requests in flight
    assert repeats <= at_stake, (repeats, at_stake)
    assert len(fake.stats()["bodies"]) == 2400
