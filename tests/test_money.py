"""Money: every attempt priced from the fake's usage, a spend cap that pauses before it is passed, resume
with a higher cap, and estimates that match what a run then reports. On SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_PAUSED
from pipeline.estimate import prompt_error
from pipeline.fakeapi import FakeServer
from tests.conftest import invoke
from tests.helpers import batch_of, chat_line, parse_jsonl, status_of, write_jsonl

#: Known prices: one token costs exactly $0.001 in, $0.002 out (cached input $0.0005).
PRICES = {"models": {"gpt-4o-mini": {"input": 1000, "cached_input": 500, "output": 2000}}}
JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps(PRICES))
    return path


def cost_from_usage(batch_id: str) -> float:
    """The cost of every answer the fake gave, from the usage in its response bodies, at PRICES."""
    export = parse_jsonl(invoke("export", batch_id, "--format", "jsonl").stdout)
    usages = [r["response"]["body"]["usage"] for r in export if r["status"] == "succeeded"]
    return sum(u["prompt_tokens"] * 0.001 + u["completion_tokens"] * 0.002 for u in usages)


def capped_file(tmp_path: Path, n: int) -> Path:
    """n requests with max_tokens set: every reservation is an upper bound of what the fake charges."""
    return write_jsonl(
        tmp_path / "jobs.jsonl", [chat_line(f"q{i}", f"question number {i}", max_tokens=16) for i in range(n)]
    )


def test_cost_equals_the_sum_of_the_fakes_usage_at_known_prices(
    fake: FakeServer, tmp_path: Path, prices: Path
) -> None:
    fake.config.error_rate = 0.1  # failed attempts report no usage and cost nothing
    result = invoke("run", str(capped_file(tmp_path, 120)), "--base-url", fake.url, "--prices", str(prices))
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_of(result.stdout), "--prices", str(prices))
    assert report["state"] == "completed" and report["finished_at"] is not None
    assert report["attempts"] > 120 and report["unpriced_models"] == []
    assert report["cost_usd"] == pytest.approx(cost_from_usage(report["batch"]), abs=1e-6)
    assert "cost: $" in result.stderr
    # The shipped table prices it too (gpt-4o-mini), far cheaper; an unknown model is listed, not zero.
    assert 0 < status_of(report["batch"])["cost_usd"] < report["cost_usd"]


def test_a_model_without_a_price_is_listed_as_unpriced(fake: FakeServer, tmp_path: Path) -> None:
    body = {"model": "my-own-model", "messages": [{"role": "user", "content": "x"}]}
    lines = [{**chat_line("a", "x"), "body": body}]
    result = invoke("run", str(write_jsonl(tmp_path / "jobs.jsonl", lines)), "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_of(result.stdout))
    assert report["unpriced_models"] == ["my-own-model"] and report["cost_usd"] == 0
    assert "no price for my-own-model" in result.stderr


def test_max_cost_pauses_before_the_cap_and_resume_with_a_higher_cap_finishes(
    fake: FakeServer, tmp_path: Path, prices: Path
) -> None:
    fake.config.latency = 0.02
    path = capped_file(tmp_path, 300)
    cap, in_flight = 1.0, 8
    result = invoke(
        "run", str(path), "--base-url", fake.url, "--prices", str(prices),
        "--max-cost", str(cap), "--max-in-flight", str(in_flight),
    )  # fmt: skip
    assert result.exit_code == EXIT_PAUSED, result.stderr
    batch_id = batch_of(result.stdout)
    paused = status_of(batch_id, "--prices", str(prices))
    assert paused["state"] == "paused" and paused["pause_reason"].startswith("spend cap")
    assert paused["max_cost_usd"] == cap
    # Every reservation is a worst case here, so the cap is never passed; and it stopped only when the
    # requests in flight could have used what was left.
    worst = (8 + 4 + 16) * 0.002  # one request's reservation, generously
    assert cap - (in_flight + 1) * worst <= paused["cost_usd"] <= cap
    assert paused["succeeded"] < 300 and paused["queued"] > 0
    assert "--max-cost USD" in result.stderr

    result = invoke("resume", batch_id, "--base-url", fake.url, "--prices", str(prices), "--max-cost", "100")
    assert result.exit_code == 0, result.stderr
    final = status_of(batch_id, "--prices", str(prices))
    assert final["state"] == "completed" and final["succeeded"] == 300 and final["max_cost_usd"] == 100
    assert final["cost_usd"] == pytest.approx(cost_from_usage(batch_id), abs=1e-6)
    assert fake.stats()["answered"] == 300  # nothing paid for twice


@pytest.mark.parametrize(
    ("name", "endpoint"),
    [("chat.jsonl", None), ("completions.jsonl", None), ("shorthand-chat.jsonl", "chat")],
)
def test_estimate_matches_what_the_run_reports(
    fake: FakeServer, tmp_path: Path, name: str, endpoint: str | None
) -> None:
    path = Path(shutil.copy(JOBS / name, tmp_path / name))
    flags = ["--endpoint", endpoint] if endpoint else []
    before = invoke("estimate", str(path), "--json", *flags)
    assert before.exit_code == 0, before.stderr
    estimate = orjson.loads(before.stdout)
    assert invoke("batches", "--json").stdout == ""  # nothing was stored

    result = invoke("run", str(path), "--base-url", fake.url, *flags)
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_of(result.stdout))
    assert fake.stats()["received"] == report["total"]  # the estimate sent nothing either
    assert estimate["requests"] == report["total"]
    messages = sum(m["messages"] for m in estimate["models"])
    error = prompt_error(report["tokens"]["prompt_tokens"], messages, report["total"])
    assert abs(estimate["prompt_tokens"] - report["tokens"]["prompt_tokens"]) <= error
    completion = report["tokens"]["completion_tokens"]
    assert estimate["completion_tokens"]["low"] <= completion <= estimate["completion_tokens"]["high"]

    # Once answers of the model are stored, the low bound is their average: this very file's completions.
    again = orjson.loads(invoke("estimate", str(path), "--json", *flags).stdout)
    assert all(m["completion_source"] == "learned" for m in again["models"])
    assert completion <= again["completion_tokens"]["low"] <= completion + report["total"]  # rounded up
    assert again["cost_usd"]["low"] <= report["cost_usd"] * 2 + 1e-6


def test_estimate_reads_the_file_as_intake_does(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line("a", "x"), {"custom_id": "b"}])
    result = invoke("estimate", str(bad))
    assert result.exit_code == 4 and "bad.jsonl:2" in result.stderr
    result = invoke("estimate", str(bad), "--skip-invalid", "--json", "--rpm", "60", "--tpm", "1000000")
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["requests"] == 1 and data["invalid"] == 1 and data["seconds"] == 1.0
