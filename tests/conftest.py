"""Every test runs with its own data directory and a known API key; nothing reads the developer's setup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.fakeapi import FakeConfig, FakeServer

pytest_plugins = ["tests.services"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (scripts/test runs the in-process tests on 2 workers) each worker process gets a
    Redis database of its own, so one test's keys and flush never touch another's."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("TEST_REDIS_URL")
    if worker and url:
        os.environ["TEST_REDIS_URL"] = f"{url.rsplit('/', 1)[0]}/{int(worker.removeprefix('gw')) + 1}"


#: The key every test uses: tests assert it never leaks anywhere.
TEST_KEY = "sk-test-SECRET-8f3a2b1c9d7e6f5a4b3c2d1e"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("PIPELINE_", "OPENAI_")):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.chdir(tmp_path)
    return data_dir


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake OpenAI API over real HTTP on a free loopback port, accepting only TEST_KEY."""
    with FakeServer(FakeConfig(api_key=TEST_KEY, seed=1)) as server:
        yield server


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    """Run the CLI in process, exceptions propagating (no swallowed tracebacks)."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
