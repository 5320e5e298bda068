"""A database that keeps refusing writes (a full disk) stops sending, says so in one line per failure, and
loses nothing: `run` exits 6, a worker waits in its process and claims again once writes work.

The faults are real: SQLite on a 14 MB tmpfs, and PostgreSQL with the `results` table in a tablespace on a
14 MB tmpfs (inserts fail with "could not extend file ... No space left on device", SQLSTATE 53100, while
the rest of the database, on the cluster's own disk, still takes small writes such as the pause). The
answers are padded so the disk fills a few hundred rows in; `mount -o remount,size=128m` frees space.
Needs root (mount), as CI runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from pipeline.cli import EXIT_STALLED
from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database, open_database
from pipeline.store.models import Request
from tests.conftest import TEST_KEY
from tests.helpers import chat_line, write_jsonl
from tests.services import Fleet, wait_for
from tests.test_fleet import answered_more_than_once, fleet_env, status, submit, wait_final

pytestmark = pytest.mark.integration

#: Rows per batch, and the length of each answer: together several times what the small disk holds.
ROWS, PAD = 2500, 6000


def _mount(size: str) -> Path:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("these tests mount a tmpfs: CI runs as root")
        pytest.skip("mounting a tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-disk-", dir="/tmp"))
    folder.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    return folder


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "--lazy", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def grow(folder: Path) -> None:
    """Free space: the same file system, larger."""
    subprocess.run(["mount", "-o", "remount,size=128m", str(folder)], check=True)


@pytest.fixture
def small_disk() -> Iterator[Path]:
    folder = _mount("14m")
    try:
        yield folder
    finally:
        _unmount(folder)


@pytest.fixture(params=["sqlite", "postgres"])
def full_database(request: pytest.FixtureRequest, small_disk: Path) -> Iterator[str]:
    """A database URL whose answers land on `small_disk`."""
    if request.param == "sqlite":
        yield f"sqlite:///{small_disk / 'pipeline.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    shutil.chown(small_disk, "postgres")
    space = f"tiny_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE TABLESPACE {space} LOCATION '{small_disk}'"))
        open_database(url).engine.dispose()  # the schema, then its answers moved to the small disk
        with admin.connect() as conn:  # uncompressed: the padded answers would shrink to nothing
            conn.execute(text(f"ALTER TABLE results SET TABLESPACE {space}"))
            for column in ("body", "output"):
                conn.execute(text(f"ALTER TABLE results ALTER COLUMN {column} SET STORAGE EXTERNAL"))
        yield url
    finally:  # the database first (its files are in the tablespace), then the tablespace
        admin.dispose()
        server, name = url.rsplit("/", 1)
        root = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with root.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"DROP TABLESPACE IF EXISTS {space}"))
        root.dispose()


def _jobs(tmp_path: Path) -> Path:
    pad = [
        chat_line(f"r{i}", "fake:" + orjson.dumps({"content": f"row {i}", "pad": PAD}).decode())
        for i in range(ROWS)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", pad)


def _stored(url: str) -> int:
    db = Database(url)
    try:
        with db.read() as s:
            return int(s.scalar(select(func.count()).where(Request.status == "succeeded")) or 0)
    finally:
        db.engine.dispose()


def _env(fake: FakeServer, url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_WRITE_STALL_SECONDS": "3",
    }


def _no_tracebacks(log: str) -> None:
    assert "Traceback" not in log, log[-5000:]
    failures = [line for line in log.splitlines() if "storing answers failed for" in line]
    assert failures, log[-3000:]  # each failed try said so, in one line


def test_run_on_a_full_disk_exits_6_and_resume_completes(
    fake: FakeServer, full_database: str, small_disk: Path, tmp_path: Path
) -> None:
    fake.config.latency = 0.02
    env = _env(fake, full_database, tmp_path)
    command = [sys.executable, "-m", "pipeline", "run", str(_jobs(tmp_path)), "--max-in-flight", "20"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == EXIT_STALLED, done.stderr[-5000:]
    _no_tracebacks(done.stderr)
    assert "refused writes" in done.stderr and "pipeline resume" in done.stderr
    batch_id = done.stdout.split()[-1]
    unstored = fake.stats()["answered"] - _stored(full_database)  # answered, never stored: paid again
    assert 0 < _stored(full_database) < ROWS

    grow(small_disk)
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "resume", batch_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr[-5000:]
    assert _stored(full_database) == ROWS
    repeats = answered_more_than_once(fake)
    print(f"full disk under run: {repeats} answered twice, {unstored} answered and unstored at the stop")
    assert repeats <= unstored


def test_a_worker_on_a_full_disk_waits_and_claims_again_once_writes_work(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    full_database: str,
    small_disk: Path,
    redis_url: str,
    tmp_path: Path,
) -> None:
    fake.config.latency = 0.02
    fleet = make_fleet(**fleet_env(fake, full_database, redis_url), PIPELINE_WRITE_STALL_SECONDS="3")
    worker = fleet.start("--max-in-flight", "20")
    batch_id = submit(fleet, _jobs(tmp_path))
    wait_for(lambda: "sending stopped" in worker.output(), 180)
    received = fake.stats()["received"]
    retries = worker.output().count("storing answers failed for")
    wait_for(lambda: worker.output().count("storing answers failed for") >= retries + 2, 60)
    assert worker.proc.poll() is None  # the process waits, it does not exit
    assert fake.stats()["received"] == received  # and sends nothing meanwhile
    unstored = fake.stats()["answered"] - _stored(full_database)

    grow(small_disk)
    wait_for(lambda: "takes writes again" in worker.output(), 60)
    if status(fleet, batch_id)["state"] == "paused":  # the pause could be written: resume says go on
        fleet.cli("resume", batch_id)
    final = wait_final(fleet, batch_id, 240)
    assert final["succeeded"] == ROWS and final["running"] == 0
    assert worker.proc.poll() is None
    _no_tracebacks(worker.output())
    repeats = answered_more_than_once(fake)
    print(f"full disk under a worker: {repeats} answered twice, {unstored} answered and unstored")
    assert repeats <= unstored
