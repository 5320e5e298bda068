"""`run --via batch-api` of embeddings and of the Responses API, killed after an upload, after a create and
while polling, then run again: every part uploaded and created once, every request answered and paid once.
How the kills are placed: tests/test_batchapi_crash.py, whose helpers these tests use."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.fakeapi import FakeServer
from tests.endpoint_cases import CASES
from tests.helpers import write_jsonl
from tests.services import wait_for
from tests.test_batchapi import status
from tests.test_batchapi_crash import HOLD, batch_api, env_for, kill, rerun_and_check, start

pytestmark = pytest.mark.integration

#: Per endpoint, the two models its seven lines are for: three parts with --part-size 3.
MODELS = {
    "embeddings": ("text-embedding-3-small", "text-embedding-3-large"),
    "responses": ("gpt-4.1-mini", "o4-mini"),
}
ENDPOINTS = [name for name in MODELS if name in CASES]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def job_file(tmp_path: Path, endpoint: str) -> Path:
    """Seven requests of two models: three parts with --part-size 3."""
    first, second = MODELS[endpoint]
    lines = [CASES[endpoint].line(i) for i in range(7)]
    for i, line in enumerate(lines):
        line["body"]["model"] = first if i < 4 else second
    return write_jsonl(tmp_path / "jobs.jsonl", lines)


def rerun_and_check_usage(fake: FakeServer, database_url: str, path: Path, env: dict[str, str]) -> None:
    """`rerun_and_check` (every part made once, every line answered once), and the usage stored is the
    usage the fake reported: nothing was paid twice."""
    batch_id = rerun_and_check(fake, database_url, path, env)
    tokens, usage = status(database_url, batch_id)["tokens"], fake.stats()["usage"]
    assert (tokens["prompt_tokens"], tokens["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_killed_after_an_upload_before_its_id_is_recorded(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]], endpoint: str
) -> None:
    fake.config.batch_delays = {"upload": HOLD}
    path, env = job_file(tmp_path, endpoint), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["uploaded"]) == 1, 60)
    kill(proc)
    assert batch_api(fake)["calls"].get("create", 0) == 0
    rerun_and_check_usage(fake, database_url, path, env)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_killed_after_a_create_before_its_id_is_recorded(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]], endpoint: str
) -> None:
    fake.config.batch_delays = {"create": HOLD}
    path, env = job_file(tmp_path, endpoint), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(lambda: len(batch_api(fake)["created"]) == 1, 60)
    kill(proc)
    rerun_and_check_usage(fake, database_url, path, env)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_killed_while_polling(
    fake: FakeServer, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]], endpoint: str
) -> None:
    fake.config.batch_seconds = 5.0
    path, env = job_file(tmp_path, endpoint), env_for(fake, database_url, tmp_path)
    proc = start(procs, path, env, tmp_path)
    wait_for(
        lambda: len(batch_api(fake)["created"]) == 3 and batch_api(fake)["calls"].get("retrieve", 0) > 3, 60
    )
    kill(proc)
    assert batch_api(fake)["lines"]["answered"] == 0  # killed before any part was answered
    rerun_and_check_usage(fake, database_url, path, env)
