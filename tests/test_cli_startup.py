"""Short commands start lean: `pipeline --help` loads no command module, `status` no ORM (issue 19).

What a command imports is read from `python -X importtime` of the real command in a fresh process, so these
assert on modules, never on timings; bench/bench_startup.py measures the times.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import orjson
import pytest
from sqlalchemy import JSON, DateTime, Enum, Float, Integer, String, Text

from pipeline.cli import COMMANDS, cli
from pipeline.fakeapi import FakeServer
from pipeline.prices import shipped
from pipeline.report import batch_report
from pipeline.store import batches, overview
from pipeline.store.db import open_database
from pipeline.store.models import Base
from tests.conftest import invoke
from tests.helpers import chat_line, write_jsonl

#: What no short command may load: the engine's HTTP client, Celery, the ORM and its models.
HEAVY = ("aiohttp", "celery", "sqlalchemy.orm", "pipeline.store.models", "pipeline.send")


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules `python -m pipeline ARGS` imports (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # the first is the header


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_lists_every_command_without_importing_any() -> None:
    modules = imported("--help")
    assert loaded(modules, ("sqlalchemy", *HEAVY, "rich")) == []
    assert not any(m.startswith("pipeline.cli.") and m.endswith("_cmds") for m in modules)


def test_the_static_command_table_is_what_the_commands_say() -> None:
    """Each row of `pipeline --help` is the first sentence of its command's docstring, shortened as click
    shortens it: the table cannot drift from the commands."""
    commands = {}
    for name, (module, summary) in COMMANDS.items():
        defined = importlib.import_module(f"pipeline.cli.{module}").COMMANDS
        command = next(c for c in defined if c.name == name)
        assert command.get_short_help_str(limit=10_000) == summary, name
        commands[name] = command
    plain = click.Group("pipeline", commands=commands)  # click's own listing, every module loaded
    ours, theirs = click.HelpFormatter(width=100), click.HelpFormatter(width=100)
    cli.format_commands(click.Context(cli), ours)
    plain.format_commands(click.Context(plain), theirs)
    assert ours.getvalue() == theirs.getvalue()
    assert "run " in ours.getvalue() and "worker " in ours.getvalue()


def test_version_and_a_command_help_still_work() -> None:
    assert invoke("--version").exit_code == 0
    result = invoke("status", "--help")
    assert result.exit_code == 0 and "--json" in result.stdout


@pytest.mark.integration
def test_status_reads_without_the_orm_and_reports_as_the_web_view_does(
    fake: FakeServer, tmp_path: Path, database_url: str
) -> None:
    """`status` (and `status --json`, without rich either) answers through SQLAlchemy Core, and says what
    `report.batch_report` says of the stored model, which the web view passes."""
    too_long = 'fake:{"status": 400, "code": "context_length_exceeded", "message": "too long"}'
    lines = [*(chat_line(f"ok-{i}", "hi") for i in range(5)), chat_line("too-long", too_long)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", lines)
    result = invoke("run", str(jobs), "--base-url", fake.url, "--database-url", database_url)
    batch_id = result.stdout.strip().splitlines()[-1]
    env = {**os.environ, "PIPELINE_DATABASE_URL": database_url}

    modules = imported("status", "--json", env=env)
    assert loaded(modules, (*HEAVY, "rich")) == []
    assert loaded(imported("status", env=env), HEAVY) == []

    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", batch_id[:6], "--json"],
        capture_output=True,
        env=env,
        check=True,
        timeout=120,
    )
    report = orjson.loads(done.stdout)
    db = open_database(database_url)
    assert report == batch_report(db, batches.get_batch(db, batch_id), shipped())
    assert report["succeeded"] == 5 and report["failed"] == 1 and report["state"] == "completed"
    assert report["failures"][0]["error_type"] == "context_length_exceeded"
    assert report["limits"] and report["attempts"] == 6


def _kind(column_type: object) -> type:
    """What a column holds, as overview.py and the models may each spell it."""
    if isinstance(column_type, Enum | String | Text):
        return str
    for spelled, kind in ((DateTime, DateTime), (JSON, JSON), (Float, float), (Integer, int)):
        if isinstance(column_type, spelled):
            return kind
    raise AssertionError(f"unexpected column type {column_type!r}")


def test_the_tables_status_reads_are_the_models_tables() -> None:
    for light in overview.TABLES:
        model = Base.metadata.tables[light.name]
        for col in light.columns:
            assert col.name in model.columns, f"{light.name}.{col.name}"
            assert _kind(col.type) is _kind(model.columns[col.name].type), f"{light.name}.{col.name}"
