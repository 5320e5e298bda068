"""A batch sent through a pool of keys, with real processes: rows flow to whichever key has budget, so two
keys of 3,000 and 6,000 RPM carry 9,000 RPM; a key revoked mid-batch is benched and the other finishes it.

The fake keeps each key's limit in 1-second buckets and logs every answer (time, key, status): rates are
measured from what it saw over the steady part of the run, as a ratio to the summed limit, never as an
absolute speed: the median of the successes per second, the first and last second left out (a second in
which a loaded machine stalled the sender is not the steady part). `run` is a process of its own, as a
user runs it: the fake answers from this one.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.fakeapi import FakeConfig, FakeServer
from tests.conftest import invoke
from tests.fair_helpers import short_chat_file
from tests.helpers import batch_of, status_of
from tests.services import Fleet, wait_for
from tests.test_fleet import answered_more_than_once, submit, wait_final

pytestmark = pytest.mark.integration

KEY_A = "sk-pool-A-5d4c3b2a1f0e9d8c7b6a"
KEY_B = "sk-pool-B-9e8d7c6b5a4f3e2d1c0b"
RPM_A, RPM_B = 3000, 6000
ROWS = 3000


@pytest.fixture
def pool_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("A_KEY", KEY_A)
    monkeypatch.setenv("B_KEY", KEY_B)
    keys = {KEY_A: {"name": "a", "rpm": RPM_A}, KEY_B: {"name": "b", "rpm": RPM_B}}
    with FakeServer(FakeConfig(keys=keys, seed=1)) as server:
        yield server


def accounts_file(path: Path, base_url: str) -> Path:
    path.write_text(
        f'[[account]]\nname = "a"\napi_key_env = "A_KEY"\nbase_url = "{base_url}"\n\n'
        f'[[account]]\nname = "b"\napi_key_env = "B_KEY"\nbase_url = "{base_url}"\n'
    )
    return path


def request_log(server: FakeServer) -> list[tuple[float, str, int]]:
    import urllib.request

    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/_fake/log", timeout=30) as answer:
        return [tuple(entry) for entry in orjson.loads(answer.read())]  # type: ignore[misc]


def steady(log: list[tuple[float, str, int]], limit_rpm: int) -> tuple[float, float, dict[str, int]]:
    """(the median of successes per second, the first and last second left out, x 60 ÷ the limit; the share
    of 429s among every answer; successes per key)."""
    ok = sorted(at for at, _, status in log if status == 200)
    seconds = [0] * (int(ok[-1] - ok[0]) + 1)
    for at in ok:
        seconds[int(at - ok[0])] += 1
    per_minute = statistics.median(seconds[1:-1]) * 60.0
    rejected = sum(1 for _, _, status in log if status == 429)
    per_key: dict[str, int] = {}
    for _, key, status in log:
        if status == 200:
            per_key[key] = per_key.get(key, 0) + 1
    return per_minute / limit_rpm, rejected / len(log), per_key


def _report(label: str, ratio: float, share429: float, per_key: dict[str, int]) -> None:
    print(f"{label}: {ratio:.3f} of {RPM_A + RPM_B} RPM, 429s {share429:.4%}, per key {per_key}")


def test_two_keys_carry_their_summed_limit_in_run(pool_fake: FakeServer, tmp_path: Path) -> None:
    jobs = short_chat_file(tmp_path / "jobs.jsonl", ROWS, "run")
    toml = accounts_file(tmp_path / "accounts.toml", pool_fake.url)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(jobs), "--accounts", str(toml)],
        env={**os.environ, "A_KEY": KEY_A, "B_KEY": KEY_B},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = status_of(batch_of(done.stdout))
    assert report["succeeded"] == ROWS
    ratio, share429, per_key = steady(request_log(pool_fake), RPM_A + RPM_B)
    _report("run", ratio, share429, per_key)
    assert ratio >= 0.95 and share429 <= 0.005
    assert 0.25 <= per_key["a"] / ROWS <= 0.42  # a third of the budget is a's
    accounts = {a["name"]: a for a in report["accounts"]}
    assert accounts["a"]["state"] == "active" and accounts["b"]["state"] == "active"
    assert (accounts["b"]["rpm"], accounts["b"]["rpm_source"]) == (RPM_B, "learned")


def test_two_workers_on_redis_carry_the_summed_limit(
    pool_fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    env = {
        "A_KEY": KEY_A,
        "B_KEY": KEY_B,
        "OPENAI_API_KEY": KEY_A,  # a worker's own account (for batches without a pool)
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_BROKER_URL": redis_url,
        "PIPELINE_LEASE_SECONDS": "4",
        "PIPELINE_TIMEOUT": "10",
    }
    fleet = make_fleet(**env)
    fleet.start_many(2)
    toml = accounts_file(tmp_path / "accounts.toml", pool_fake.url)
    batch_id = submit(fleet, short_chat_file(tmp_path / "jobs.jsonl", ROWS, "fleet"), "--accounts", str(toml))
    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == ROWS
    ratio, share429, per_key = steady(request_log(pool_fake), RPM_A + RPM_B)
    _report("two workers", ratio, share429, per_key)
    assert ratio >= 0.95 and share429 <= 0.005
    assert answered_more_than_once(pool_fake) == 0


def test_a_key_revoked_mid_batch_is_benched_and_the_other_finishes(
    pool_fake: FakeServer, tmp_path: Path, database_url: str
) -> None:
    pool_fake.config.latency = 0.2
    jobs = short_chat_file(tmp_path / "jobs.jsonl", 1500, "revoke")
    toml = accounts_file(tmp_path / "accounts.toml", pool_fake.url)

    def revoke_when_under_way() -> None:
        wait_for(lambda: pool_fake.stats()["answered"] >= 300, 60)
        assert pool_fake.config.keys is not None
        pool_fake.config.keys[KEY_A]["revoked"] = True

    revoker = threading.Thread(target=revoke_when_under_way, daemon=True)
    revoker.start()
    db = ["--database-url", database_url]
    result = invoke("run", str(jobs), "--accounts", str(toml), *db)
    revoker.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_of(result.stdout), *db)
    assert report["succeeded"] == 1500 and report["state"] == "completed"
    stats: dict[str, Any] = pool_fake.stats()
    lost = stats["by_key"]["a"].get("401", 0)
    print(f"revoked: {lost} answers 401 at the fake; a's most in flight {stats['max_in_flight_by_key']['a']}")
    # Only requests sent to a before the engine saw its first 401 can get one: at most a's in flight.
    assert 1 <= lost <= stats["max_in_flight_by_key"]["a"], stats
    assert answered_more_than_once(pool_fake) == 0
    accounts = {a["name"]: a for a in report["accounts"]}
    assert accounts["a"]["state"] == "benched" and "401" in accounts["a"]["reason"]
    assert accounts["b"]["state"] == "active"
    # resume (and retry) make every account active again
    invoke("resume", batch_of(result.stdout), "--accounts", str(toml), *db)
    assert {a["state"] for a in status_of(batch_of(result.stdout), *db)["accounts"]} == {"active"}
