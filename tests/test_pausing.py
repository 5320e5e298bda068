"""Errors no retry can fix stop the batch, not the row: a wrong key, an unknown model or path, a dead URL.

The batch pauses with the reason after at most the requests in flight, `pipeline status` shows it, the
command exits 5, and `pipeline resume` continues once the cause is fixed, losing nothing. And Ctrl-C is
explained: exit 130, what is left, and how to continue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, Popen

import pytest

from pipeline.cli import EXIT_PAUSED
from pipeline.fakeapi import FakeConfig, FakeServer
from tests.conftest import TEST_KEY, invoke
from tests.helpers import batch_of, chat_file, chat_line, status_of, write_jsonl
from tests.services import free_port, wait_for


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def test_a_wrong_key_pauses_the_batch_and_resume_with_the_right_key_completes_it(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000")
    path = chat_file(tmp_path / "jobs.jsonl", 1000)
    result = invoke("run", str(path), "--base-url", fake.url, "--max-in-flight", "50")
    assert result.exit_code == EXIT_PAUSED, result.stderr
    batch_id = batch_of(result.stdout)
    paused = status_of(batch_id)
    assert paused["state"] == "paused" and "Incorrect API key" in paused["pause_reason"]
    assert paused["failed"] == 0 and paused["queued"] == 1000
    sent_with_the_wrong_key = fake.stats()["received"]
    assert sent_with_the_wrong_key <= 50, sent_with_the_wrong_key  # at most what was in flight
    assert "pipeline resume" in result.stderr

    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    result = invoke("resume", batch_id, "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    final = status_of(batch_id)
    assert final["succeeded"] == 1000 and final["state"] == "completed"
    assert fake.stats()["answered"] == 1000
    assert fake.stats()["received"] == 1000 + sent_with_the_wrong_key


def test_an_unknown_model_pauses_and_resume_continues_once_it_exists(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.config.models = ["gpt-4o-mini"]
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(100)]
    lines.append(
        {
            **chat_line("new-model", "x"),
            "body": {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
        }
    )
    result = invoke("run", str(write_jsonl(tmp_path / "jobs.jsonl", lines)), "--base-url", fake.url)
    assert result.exit_code == EXIT_PAUSED, result.stderr
    batch_id = batch_of(result.stdout)
    paused = status_of(batch_id)
    assert "gpt-9" in paused["pause_reason"] and paused["failed"] == 0
    fake.config.models = ["gpt-4o-mini", "gpt-9"]  # access granted
    result = invoke("resume", batch_id, "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    assert status_of(batch_id)["succeeded"] == 101


def test_a_base_url_without_v1_pauses_at_the_first_answer(fake: FakeServer, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "jobs.jsonl", 100)
    result = invoke("run", str(path), "--base-url", fake.url.removesuffix("/v1"), "--max-in-flight", "20")
    assert result.exit_code == EXIT_PAUSED, result.stderr
    paused = status_of(batch_of(result.stdout))
    assert "404" in paused["pause_reason"] and "base URL" in paused["pause_reason"]
    assert paused["queued"] == 100
    assert fake.stats()["received"] <= 20


def test_a_dead_url_trips_the_breaker_and_resume_completes_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_BREAKER_FAILURES", "10")
    monkeypatch.setenv("PIPELINE_BREAKER_SECONDS", "3")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    path = chat_file(tmp_path / "jobs.jsonl", 200)
    result = invoke("run", str(path), "--base-url", url)
    assert result.exit_code == EXIT_PAUSED, result.stderr
    batch_id = batch_of(result.stdout)
    paused = status_of(batch_id)
    assert "is not answering" in paused["pause_reason"]
    assert paused["failed"] == 0 and paused["queued"] == 200  # every row keeps its attempts
    with FakeServer(FakeConfig(api_key=TEST_KEY), port=port) as fake:
        result = invoke("resume", batch_id, "--base-url", url)
        assert result.exit_code == 0, result.stderr
        assert status_of(batch_id)["succeeded"] == 200
        assert fake.stats()["received"] == 200


class Runs:
    """`pipeline run FILE` processes, each with its stderr in a file (readable while it runs)."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env, self.tmp_path = env, tmp_path
        self.started: list[tuple[Popen[str], Path]] = []

    def start(self, path: Path) -> Popen[str]:
        command = [sys.executable, "-m", "pipeline", "run", str(path), "--max-in-flight", "50"]
        log = self.tmp_path / f"run-{len(self.started)}.err"
        with open(log, "w") as err:
            proc = subprocess.Popen(command, env=self.env, stdout=PIPE, stderr=err, text=True)
        self.started.append((proc, log))
        return proc

    def stderr(self, proc: Popen[str]) -> str:
        return next(log for p, log in self.started if p is proc).read_text()

    def finish(self, proc: Popen[str], timeout: float) -> tuple[str, str]:
        """Its stdout and stderr, once it has exited; past `timeout`, a failure with every thread's stack
        (SIGABRT makes faulthandler print them)."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.communicate(timeout=30)
            raise AssertionError(f"still running after {timeout} s:\n{self.stderr(proc)[-20000:]}") from None
        return out, self.stderr(proc)


@pytest.fixture
def runs(fake: FakeServer, tmp_path: Path, database_url: str) -> Iterator[Runs]:
    """Start `pipeline run FILE` as its own process; any still running at the end is killed."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PYTHONFAULTHANDLER": "1",
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
    }
    started = Runs(env, tmp_path)
    yield started
    for proc, _ in started.started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_ctrl_c_drains_says_how_to_continue_and_exits_130(
    fake: FakeServer, tmp_path: Path, runs: Runs
) -> None:
    fake.config.latency = 0.2
    path = chat_file(tmp_path / "jobs.jsonl", 2000)
    proc = runs.start(path)
    wait_for(lambda: fake.stats()["answered"] >= 200 or proc.poll() is not None, 60)
    proc.send_signal(signal.SIGINT)
    out, err = runs.finish(proc, 60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    batch_id = batch_of(out)
    stopped = status_of(batch_id)
    assert stopped["running"] == 0 and stopped["succeeded"] == fake.stats()["answered"]

    again = runs.start(path)
    out, err = runs.finish(again, 120)
    assert again.returncode == 0, err
    assert status_of(batch_id)["succeeded"] == 2000
    assert all(entry["answered"] == 1 for entry in fake.stats()["bodies"].values())


def test_a_second_ctrl_c_stops_at_once_and_the_next_run_finishes(
    fake: FakeServer, tmp_path: Path, runs: Runs
) -> None:
    fake.config.latency = 2.0  # the first Ctrl-C would wait for these
    path = chat_file(tmp_path / "jobs.jsonl", 500)
    proc = runs.start(path)
    wait_for(lambda: fake.stats()["in_flight"] >= 40 or proc.poll() is not None, 60)
    proc.send_signal(signal.SIGINT)
    # The first one is handled: the engine drains, waiting on answers 2 s away.
    draining = "SIGINT: finishing the requests in flight"
    wait_for(lambda: draining in runs.stderr(proc) or proc.poll() is not None, 60)
    proc.send_signal(signal.SIGINT)
    out, err = runs.finish(proc, 60)
    assert proc.returncode == 130, err
    assert "interrupted again" in err and "Traceback" not in err

    fake.config.latency = 0.0
    again = runs.start(path)
    out, err = runs.finish(again, 120)
    assert again.returncode == 0, err
    final = status_of(batch_of(out))
    assert final["succeeded"] == 500 and final["running"] == 0
