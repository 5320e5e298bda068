"""Workers as monitoring sees them, and a spend cap shared by two `pipeline worker` processes over Redis.

Real processes: `pipeline worker` with --metrics-port, real Redis, SQLite and PostgreSQL, the fake API.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY
from tests.helpers import chat_line, write_jsonl
from tests.services import Fleet, free_port, wait_for

pytestmark = pytest.mark.integration

#: One token costs exactly $0.001 in, $0.002 out.
PRICES = {"models": {"gpt-4o-mini": {"input": 1000, "output": 2000}}}


def fleet_env(fake: FakeServer, database_url: str, redis_url: str, prices: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_BROKER_URL": redis_url,
        "PIPELINE_LEASE_SECONDS": "4",
        "PIPELINE_CHUNK_SIZE": "50",
        "PIPELINE_TIMEOUT": "10",
        "PIPELINE_PRICES_FILE": str(prices),
    }


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps(PRICES))
    return path


def status(fleet: Fleet, batch_id: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(fleet.cli("status", batch_id, "--json").stdout)
    return result


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the /metrics page: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_counters_match_the_batch_rows(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    prices: Path,
) -> None:
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url, prices))
    port = free_port()
    fleet.start("--metrics-port", str(port))
    lines = [chat_line(f"q{i}", f"question {i}", max_tokens=8) for i in range(180)]
    lines += [chat_line(f"bad{i}", 'fake:{"status": 400}') for i in range(20)]
    batch_id = fleet.cli("submit", str(write_jsonl(tmp_path / "jobs.jsonl", lines))).stdout.split()[-1]
    wait_for(lambda: status(fleet, batch_id)["state"] == "completed", 120, interval=0.5)
    report = status(fleet, batch_id)
    wait_for(lambda: scrape(port)[("pipeline_requests_total", (("outcome", "failed"),))] == 20, 10)
    metrics = scrape(port)
    assert metrics[("pipeline_requests_total", (("outcome", "succeeded"),))] == report["succeeded"] == 180
    assert metrics[("pipeline_requests_total", (("outcome", "failed"),))] == report["failed"] == 20
    attempts = sum(v for (name, _), v in metrics.items() if name == "pipeline_attempts_total")
    assert attempts == report["attempts"] == 200
    assert metrics[("pipeline_attempts_total", (("status", "400"),))] == 20
    assert metrics[("pipeline_tokens_total", (("kind", "prompt"),))] == report["tokens"]["prompt_tokens"]
    assert (
        metrics[("pipeline_tokens_total", (("kind", "completion"),))] == report["tokens"]["completion_tokens"]
    )
    assert metrics[("pipeline_cost_usd_total", (("model", "gpt-4o-mini"),))] == pytest.approx(
        report["cost_usd"]
    )
    assert metrics[("pipeline_request_latency_seconds_count", ())] == 200
    assert metrics[("pipeline_limiter_wait_seconds_count", ())] == 200
    assert metrics[("pipeline_in_flight", ())] == 0
    assert metrics[("pipeline_rate_limited_total", ())] == report["rate_limited"] == 0


def test_two_workers_share_one_spend_cap_through_redis(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    prices: Path,
) -> None:
    fake.config.latency = 0.05
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url, prices))
    in_flight = 10
    fleet.start_many(2, "--max-in-flight", str(in_flight))
    lines = [chat_line(f"q{i}", f"question number {i}", max_tokens=16) for i in range(600)]
    cap = 2.0
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    batch_id = fleet.cli("submit", str(path), "--max-cost", str(cap)).stdout.split()[-1]
    wait_for(lambda: status(fleet, batch_id)["state"] == "paused", 120, interval=0.5)
    wait_for(lambda: status(fleet, batch_id)["running"] == 0, 30, interval=0.5)
    paused = status(fleet, batch_id)
    assert paused["pause_reason"].startswith("spend cap") and paused["max_cost_usd"] == cap
    worst = (8 + 4 + 16) * 0.002  # one request's reservation, generously
    # One budget for both: never over the cap (every reservation is a worst case), and stopped only when
    # the requests in flight in both workers could have used what was left.
    assert cap - (2 * in_flight + 1) * worst <= paused["cost_usd"] <= cap
    assert paused["queued"] > 0

    fleet.cli("resume", batch_id, "--max-cost", "100")
    wait_for(lambda: status(fleet, batch_id)["state"] == "completed", 120, interval=0.5)
    final = status(fleet, batch_id)
    assert final["succeeded"] == 600 and final["max_cost_usd"] == 100
    assert fake.stats()["answered"] == 600
