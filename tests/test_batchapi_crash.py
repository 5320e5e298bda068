"""`pipeline run --via batch-api` as a real process, killed at each remote step, run again: nothing twice.

The test decides where the kill lands by watching the fake: `batch_delays` holds the answer to an upload
(or a create) after the fake has stored the file (made the batch), so the process is killed having made
it without learning its id, the hardest moment; a long processing time kills it while it polls. Every
wait is bounded; the processes are killed at the end whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY, invoke
from tests.helpers import chat_line, write_jsonl
from tests.services import wait_for
from tests.test_batchapi import answered_twice, attempts_of, requests_of, status

pytestmark = pytest.mark.integration

#: Seconds the fake holds an answer: far longer than the test needs to kill the process.
HOLD = 60.0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def env_for(fake: FakeServer, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_BATCH_POLL_SECONDS": "0.3",
        "PIPELINE_LEASE_SECONDS": "600",  # a rerun must take over at once, not after a lease
    }


def job_file(tmp_path: Path) -> Path:
    """Seven requests of two models: three parts with --part-size 3."""
    lines = [chat_line(f"mini-{i}", f"mini question {i}") for i in range(4)]
    lines += [
        {
            **chat_line(f"big-{i}", "x"),
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"b{i}"}]},
        }
        for i in range(3)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", lines)


def command(path: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(path), "--via", "batch-api", "--part-size", "3"]


def start(
    procs: list[subprocess.Popen[bytes]], path: Path, env: dict[str, str], tmp_path: Path
) -> subprocess.Popen[bytes]:
    with open(tmp_path / f"run-{len(procs)}.log", "wb") as log:
        proc = subprocess.Popen(command(path), env=env, stdout=log, stderr=log, start_new_session=True)
    procs.append(proc)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def batch_api(fake: FakeServer) -> dict[str, Any]:
    stats: dict[str, Any] = fake.stats()["batch_api"]
    return stats


def rerun_and_check(fake: FakeServer, database_url: str, path: Path, env: dict[str, str]) -> str:
    """Run the same command again to the end: every part uploaded and created once, every row once."""
    fake.config.batch_delays = None
    again = subprocess.run(command(path), env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    batch_id = again.stdout.split()[-1]
    api = batch_api(fake)
    parts = [p["part"] for p in status(database_url, batch_id)["parts"]]
    assert len(parts) == 3
    assert Counter(api["uploaded"]) == {f"pipeline-{batch_id}-{p}.jsonl": 1 for p in parts}
    assert Counter(c["metadata"]["pipeline_part"] for c in api["created"]) == {p: 1 for p in parts}
    rows = requests_of(database_url, batch_id)
    assert len(rows) == 7 and all(r.status == "succeeded" and r.attempts == 1 for r in rows.values())
    assert all(len(found) == 1 for found in attempts_of(database_url, batch_id).values())
    assert answered_twice(fake) == 0 and api["lines"]["answered"] == 7
    return batch_id


def test_killed_after_an_upload_before_its_id_is_recorded(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    fake.config.batch_delays = {"upload": HOLD}
    path, env = job_file(tmp_path), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["uploaded"]) == 1, 60)
    kill(proc)
    assert batch_api(fake)["calls"].get("create", 0) == 0
    rerun_and_check(fake, database_url, path, env)


def test_killed_after_a_create_before_its_id_is_recorded(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    fake.config.batch_delays = {"create": HOLD}
    path, env = job_file(tmp_path), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["created"]) == 1, 60)
    kill(proc)
    rerun_and_check(fake, database_url, path, env)


def test_killed_while_polling(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    fake.config.batch_delays = {"retrieve": HOLD}  # every poll waits: the process is killed polling
    path, env = job_file(tmp_path), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: batch_api(fake)["calls"].get("retrieve", 0) >= 1, 60)
    kill(proc)
    assert batch_api(fake)["calls"].get("file_content", 0) == 0  # it never learned a part's answers
    rerun_and_check(fake, database_url, path, env)


def test_ctrl_c_leaves_the_remote_batches_running_and_the_same_command_continues(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    fake.config.batch_seconds = 15.0  # still running when the interrupt lands, even on a loaded machine
    path, env = job_file(tmp_path), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["created"]) == 3, 60)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130  # interrupted: the same command continues
    log = (tmp_path / "run-0.log").read_text()
    assert "3 parts are still with the Batch API; run the same command again" in log
    assert batch_api(fake)["cancelled"] == []
    rerun_and_check(fake, database_url, path, env)


def test_cancel_reaches_the_remote_batches(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    fake.config.batch_seconds = HOLD
    path, env = job_file(tmp_path), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["created"]) == 3, 60)
    batch_id = orjson.loads(invoke("status", "--json", "--database-url", database_url).stdout)["batch"]
    done = invoke("cancel", batch_id, "--database-url", database_url, "--base-url", fake.url)
    assert done.exit_code == 0, done.stderr
    assert "3 of 3 Batch API batches asked to cancel" in done.stderr
    created = {c["id"] for c in batch_api(fake)["created"]}
    assert set(batch_api(fake)["cancelled"]) == created
    assert proc.wait(timeout=60) == 3  # the run stores the cancelled parts and ends
    report = status(database_url, batch_id)
    assert report["cancelled"] == 7 and report["running"] == 0
    assert {p["remote_status"] for p in report["parts"]} == {"cancelled"}
    assert batch_api(fake)["lines"]["answered"] == 0
