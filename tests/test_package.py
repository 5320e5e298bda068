"""A real package: the wheel runs from anywhere, where the data lives, Celery's own CLI (the Python API:
tests/test_api.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings, find_data_dir
from tests.conftest import TEST_KEY, invoke
from tests.helpers import chat_file, chat_line, write_jsonl
from tests.services import Fleet, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_api_is_pinned() -> None:
    assert sorted(pipeline.__all__) == sorted(
        [
            "APIError",
            "AccessDenied",
            "BadResponse",
            "Batch",
            "BatchBlocked",
            "BatchNotFound",
            "BatchPaused",
            "BatchState",
            "ConfigError",
            "ConnectError",
            "DuplicateBatch",
            "EndpointDown",
            "ErrorType",
            "JobFileError",
            "LineError",
            "NotFound",
            "PathError",
            "PermanentError",
            "PipelineError",
            "QuotaExhausted",
            "RateLimited",
            "RequestStatus",
            "RetryableError",
            "Settings",
            "__version__",
            "arun",
            "asubmit",
            "batch",
            "results",
            "run",
            "submit",
        ]
    )
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None


def test_importing_pipeline_loads_neither_the_engine_nor_the_database() -> None:
    heavy = "('aiohttp', 'sqlalchemy', 'celery')"
    code = f"import sys, pipeline; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_minimum_versions_ci_installs_are_the_declared_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["tokens"]
    floors = {}
    for requirement in declared:
        match = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?>=([^;,\s]+)", requirement)
        assert match, requirement
        floors[match.group(1).lower()] = match.group(3)
    pinned = {}
    for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip().lower()] = version.strip()
    assert pinned == floors
    assert "toktok-rs" not in {f.split(">=")[0] for f in project["dependencies"]}  # an extra


def test_every_package_of_the_source_tree_is_in_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.relative_to(ROOT).parent.parts) for path in (ROOT / "pipeline").rglob("__init__.py")
    }
    assert found <= listed and {"pipeline.migrations", "pipeline.migrations.versions"} <= listed


# --- where the data lives ------------------------------------------------------------------------------


def test_the_data_directory_is_found_as_git_finds_dot_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    deep = tmp_path / "project" / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Settings.load().data_dir == tmp_path / "xdg" / "pipeline"  # the user's data directory
    (tmp_path / "project" / ".pipeline").mkdir()
    settings = Settings.load()
    assert settings.data_dir == tmp_path / "project" / ".pipeline"
    assert "found in" in settings.data_dir_source
    assert find_data_dir(deep)[0] == settings.data_dir
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "env"))
    assert Settings.load().data_dir == tmp_path / "env"
    assert Settings.load({"data_dir": str(tmp_path / "flag")}).data_dir == tmp_path / "flag"


def test_reading_commands_never_create_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "nothing-here"
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data))
    for command in (["status"], ["batches"], ["export"], ["cancel", "abc"], ["retry", "abc"]):
        result = invoke(*command)
        assert result.exit_code == 1 and "no batches yet" in result.stderr, command
    assert not data.exists()
    result = invoke("db", "path")
    assert result.exit_code == 0 and result.stdout.strip() == str((data / "pipeline.db").resolve())
    assert "no database there yet" in result.stderr
    assert not data.exists()


# --- the wheel, installed the way users install Python tools ------------------------------------------

#: Every distribution a plain `pip install pipeline-bulk` may bring, vetted: the hard dependencies (all
#: well-established, widely used packages) and what they pull in, on the platforms we run on. A new one
#: must be looked at before it is added here.
VETTED = {
    # pipeline-bulk's own dependencies
    *("celery", "kombu", "redis", "sqlalchemy", "alembic", "tenacity", "click", "aiohttp", "multidict"),
    *("orjson", "rich", "platformdirs", "uvloop", "prometheus-client"),
    # celery, kombu
    *("billiard", "vine", "amqp", "click-didyoumean", "click-plugins", "click-repl", "prompt-toolkit"),
    *("wcwidth", "python-dateutil", "six", "tzdata", "tzlocal", "packaging"),
    # sqlalchemy, alembic
    *("greenlet", "typing-extensions", "mako", "markupsafe"),
    # aiohttp
    *("aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "propcache", "yarl", "idna", "async-timeout"),
    # rich
    *("markdown-it-py", "mdurl", "pygments"),
}


@pytest.mark.integration
@pytest.mark.timeout(900)  # its own steps allow 300 s to build, 600 to install: more than the default
def test_the_wheel_installed_in_a_fresh_venv_runs_every_command_and_the_demo_from_anywhere(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("pipeline", "migrations", "jobs"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "clips"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("pipeline_bulk-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin" / "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "PYTHON"))},
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "home" / "data"),
        "OPENAI_API_KEY": TEST_KEY,
    }
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {name.lower().replace("_", "-") for name in installed} - {"pip", "setuptools", "pipeline-bulk"}
    assert names <= VETTED, sorted(names - VETTED)
    shown = subprocess.run([venv / "bin" / "pip", "show", "pipeline-bulk"], capture_output=True, text=True)
    requires = shown.stdout.split("Requires:")[1].splitlines()[0]
    assert {r.strip().lower().replace("_", "-") for r in requires.split(",")} <= VETTED
    assert "toktok" not in shown.stdout

    bin_ = venv / "bin" / "pipeline"
    demo = subprocess.run([bin_, "demo"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    csvs = sorted(p.name for p in (elsewhere / "demo-out").glob("*.csv"))
    assert csvs == sorted(f"{p.stem}.csv" for p in (ROOT / "jobs").glob("*.jsonl"))
    assert all((elsewhere / "demo-out" / name).read_text().count("\n") > 1 for name in csvs)

    port = free_port()
    fake = subprocess.Popen([bin_, "fake-api", "--port", str(port)], env=env, cwd=elsewhere)
    try:
        wait_for(lambda: _listening(port), 30)
        job = write_jsonl(elsewhere / "jobs.jsonl", [chat_line(f"w{i}", f"wheel {i}") for i in range(10)])

        def pipeline_cmd(*args: str) -> subprocess.CompletedProcess[str]:
            done = subprocess.run(
                [bin_, *args], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, (args, done.stderr)
            return done

        pipeline_cmd("run", str(job), "--base-url", f"http://127.0.0.1:{port}/v1")
        assert '"succeeded":10' in pipeline_cmd("status", "--json").stdout
        assert pipeline_cmd("export", "--format", "csv").stdout.count("\n") == 11
        pipeline_cmd("db", "upgrade")
        assert pipeline_cmd("db", "path").stdout.startswith(str(tmp_path / "home" / "data"))
        code = "import pipeline, pipeline.store.db as d; print(d.migrations_dir(), pipeline.__version__)"
        where = subprocess.run([python, "-c", code], env=env, cwd=elsewhere, capture_output=True, text=True)
        assert "site-packages/pipeline/migrations" in where.stdout, where.stderr
        assert (
            where.stdout.split()[-1]
            == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        )
    finally:
        fake.terminate()
        fake.wait(timeout=10)


@pytest.mark.integration
def test_the_demo_runs_from_the_checkout_anywhere(tmp_path: Path) -> None:
    result = invoke(
        "demo", "--out", str(tmp_path / "out")
    )  # the working directory is tmp_path, not the checkout
    assert result.exit_code == 0, result.stderr
    made = sorted(Path(line).name for line in result.stdout.split())
    assert made == sorted(f"{p.stem}.csv" for p in (ROOT / "jobs").glob("*.jsonl"))
    assert sorted(p.name for p in (tmp_path / "out" / "jobs" / "clips").glob("*.wav"))  # written there


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- Celery's own command line -------------------------------------------------------------------------


@pytest.mark.integration
def test_celery_command_line_runs_and_inspects_workers(
    fake: FakeServer, make_fleet: Any, redis_url: str, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(
        OPENAI_API_KEY=TEST_KEY,
        OPENAI_BASE_URL=fake.url,
        PIPELINE_BROKER_URL=redis_url,
        PIPELINE_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}",
    )
    celery = [sys.executable, "-m", "celery", "-A", "pipeline.celery_app"]
    log = tmp_path / "celery.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*celery, "worker", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
            env=fleet.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 60)
        batch_id = fleet.cli("submit", str(chat_file(tmp_path / "jobs.jsonl", 50))).stdout.split()[-1]
        wait_for(lambda: '"succeeded":50' in fleet.cli("status", batch_id, "--json").stdout, 60)
        ping = subprocess.run(
            [*celery, "inspect", "ping"], env=fleet.env, capture_output=True, text=True, timeout=60
        )
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    finally:
        os.killpg(worker.pid, 15)
        assert worker.wait(timeout=60) == 0, log.read_text(errors="replace")
