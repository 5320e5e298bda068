"""Each bulk endpoint end to end, on SQLite and PostgreSQL: 300 requests through `run` and through two
workers against a fake that answers 2.5% of requests 5xx and leaves 2.5% hanging, then through the Batch
API. Every row must end succeeded, the usage stored must be the usage the fake reported, nothing may be
answered twice, and every export must carry what the fake sent (vectors bit for bit).

A hanging request is given up after PIPELINE_TIMEOUT (8 s) and sent again; the fake answers the others in
milliseconds, so only hanging requests ever reach the timeout, however loaded the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.fakeapi import FakeServer
from pipeline.prices import shipped
from tests.conftest import invoke
from tests.endpoint_cases import CASES
from tests.helpers import parse_csv, parse_jsonl, write_jsonl
from tests.services import Fleet
from tests.test_fleet import fleet_env, submit, wait_final

pytestmark = pytest.mark.integration

LINES = 300
TIMEOUT = "8"


@pytest.fixture
def faulty(fake: FakeServer) -> Iterator[FakeServer]:
    fake.config.error_rate = 0.025
    fake.config.hang_rate = 0.025
    yield fake


def job_file(tmp_path: Path, endpoint: str, n: int = LINES) -> tuple[Path, dict[str, dict[str, Any]]]:
    lines = [CASES[endpoint].line(i) for i in range(n)]
    return write_jsonl(tmp_path / f"{endpoint}.jsonl", lines), {
        line["custom_id"]: line["body"] for line in lines
    }


def check_batch(
    fake: FakeServer,
    endpoint: str,
    bodies: dict[str, dict[str, Any]],
    status: dict[str, Any],
    export: Callable[[str], str],
) -> None:
    """Every row succeeded once, the stored usage is the fake's, and the exports are the fake's answers."""
    assert (status["succeeded"], status["failed"], status["total"]) == (len(bodies), 0, len(bodies))
    stats = fake.stats()
    assert all(entry["answered"] == 1 for entry in stats["bodies"].values())  # nothing paid twice
    assert len(stats["bodies"]) == len(bodies)
    usage = stats["usage"]
    assert (status["tokens"]["prompt_tokens"], status["tokens"]["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    rows = {row["custom_id"]: row for row in parse_csv(export("csv"))}
    records = {record["custom_id"]: record for record in parse_jsonl(export("jsonl"))}
    lines = {line["custom_id"]: line for line in parse_jsonl(export("openai"))}
    assert rows.keys() == records.keys() == lines.keys() == bodies.keys()
    for custom_id, body in bodies.items():
        assert records[custom_id]["request"] == body
        CASES[endpoint].check(body, rows[custom_id], records[custom_id], lines[custom_id])


@pytest.mark.parametrize("endpoint", list(CASES))
def test_run_with_5xx_and_hangs_ends_every_row_succeeded_once(
    faulty: FakeServer, database_url: str, tmp_path: Path, endpoint: str
) -> None:
    path, bodies = job_file(tmp_path, endpoint)
    where = ("--database-url", database_url)
    result = invoke("run", str(path), "--base-url", faulty.url, "--timeout", TIMEOUT, *where)
    assert result.exit_code == 0, result.stderr
    batch_id = result.stdout.strip().splitlines()[-1]
    assert faulty.stats()["by_status"].keys() > {"200"}  # the faults did happen
    status = orjson.loads(invoke("status", batch_id, "--json", *where).stdout)
    check_batch(
        faulty, endpoint, bodies, status, lambda f: invoke("export", batch_id, "--format", f, *where).stdout
    )


@pytest.mark.parametrize("endpoint", list(CASES))
def test_two_workers_with_5xx_and_hangs_end_every_row_succeeded_once(
    faulty: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    endpoint: str,
) -> None:
    fleet = make_fleet(**{**fleet_env(faulty, database_url, redis_url), "PIPELINE_TIMEOUT": TIMEOUT})
    workers = fleet.start_many(2)
    path, bodies = job_file(tmp_path, endpoint)
    batch_id = submit(fleet, path)
    status = wait_final(fleet, batch_id, 180)
    check_batch(
        faulty, endpoint, bodies, status, lambda f: fleet.cli("export", batch_id, "--format", f).stdout
    )
    for worker in workers:
        assert worker.terminate(timeout=60) == 0, worker.output()


@pytest.mark.parametrize("endpoint", list(CASES))
def test_through_the_batch_api_at_half_price(
    fake: FakeServer, database_url: str, tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_BATCH_POLL_SECONDS", "0.3")
    path, bodies = job_file(tmp_path, endpoint, 40)
    where = ("--database-url", database_url)
    result = invoke(
        "run", str(path), "--base-url", fake.url, "--via", "batch-api", "--part-size", "15", *where
    )
    assert result.exit_code == 0, result.stderr
    batch_id = result.stdout.strip().splitlines()[-1]
    status = orjson.loads(invoke("status", batch_id, "--json", *where).stdout)
    assert [part["lines"] for part in status["parts"]] == [15, 15, 10]
    assert fake.stats()["received"] == 0 and fake.stats()["batch_api"]["lines"]["answered"] == 40
    usage, model = fake.stats()["usage"], next(iter(bodies.values())).get("model", "omni-moderation-latest")
    direct = shipped().cost(model, "direct", usage["prompt_tokens"], 0, usage["completion_tokens"])
    assert direct is not None and status["cost_usd"] == round(direct / 2, 6)
    check_batch(
        fake, endpoint, bodies, status, lambda f: invoke("export", batch_id, "--format", f, *where).stdout
    )
