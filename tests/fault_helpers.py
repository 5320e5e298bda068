"""What a fault put at stake, and what was answered twice: the bound every fault test checks.

A request may be answered twice only if it was at stake when the fault struck: sent and not yet stored (on
the wire, or answered and not written). So a fault test counts, for the process at fault and after the
fault (when those counts can no longer change), what it sent and what it stored:

- sent: the fake counts the requests carrying each `OpenAI-Project` header (stats `projects`). The tests
  give the process at fault a project id of its own (`OPENAI_PROJECT_ID`) to tell its requests apart. The
  project is part of the rate-limit key, so this is used only where the fake sets no limits: it changes
  nothing else.
- stored: every success names the engine that stored it (`requests.worker`, `host:pid:suffix`; an engine
  that registers anew keeps its pid).

When the fake injects no errors, every request sent was by then either in flight or answered, so sent -
stored, read after the fault, is exactly "in flight + answered - stored" at the moment of the fault.

On a loaded machine a live engine whose beats stall for a whole lease is taken for dead too (by design: it
stopped sending a quarter lease before, but what it had on the wire may be sent again). Such an engine says
"declared dead" in its log; `at_stake_of_faults` counts what it had at stake as well, so the bound holds for
every fault that happened, planned or not.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import func, make_url, select, text

from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database
from pipeline.store.models import Request, RequestStatus
from tests.services import Worker, wait_for

#: Seconds the fake takes to answer while a fault is set up: what the process at fault has in flight is
#: still in flight when the fault lands, on a loaded machine too.
SLOW_ANSWERS = 5.0


def answered_more_than_once(fake: FakeServer) -> int:
    """Requests (by body) the fake answered 2xx more than once: each one was paid twice."""
    return sum(1 for entry in fake.stats()["bodies"].values() if entry["answered"] > 1)


def stored_successes(database_url: str, pid: int | None = None) -> int:
    """Successes stored in the database; with `pid`, only those stored by that process's engine."""
    query = select(func.count()).select_from(Request).where(Request.status == RequestStatus.SUCCEEDED)
    if pid is not None:
        query = query.where(Request.worker.startswith(f"{socket.gethostname()}:{pid}:"))
    db = Database(database_url)
    try:
        with db.read() as s:
            return int(s.scalar(query) or 0)
    finally:
        db.engine.dispose()


def sent_by(fake: FakeServer, project: str) -> int:
    """Requests the fake received with `OpenAI-Project: project`."""
    return int(fake.stats()["projects"].get(project, 0))


def at_stake_of(fake: FakeServer, database_url: str, project: str, pid: int) -> int:
    """What the process (sending as `project`, engine pid `pid`) sent and did not store. Read it once the
    process can send and store no more (killed, or the batch final): then it is what the fault put at stake.
    """
    return sent_by(fake, project) - stored_successes(database_url, pid)


def at_stake_of_faults(
    fake: FakeServer,
    database_url: str,
    at_fault: Sequence[tuple[str, Worker]],
    others: Sequence[tuple[str, Worker]] = (),
) -> int:
    """What the faults put at stake: the processes at fault (project, worker), and any of the `others`
    whose engine was declared dead meanwhile. Read it once the batch is final."""
    faulted = [*at_fault, *((project, w) for project, w in others if "declared dead" in w.output())]
    return sum(at_stake_of(fake, database_url, project, w.proc.pid) for project, w in faulted)


def burials_of(watcher: Worker, dead: Worker) -> int:
    """How many times `watcher` logged burying an engine of the `dead` worker's process."""
    engine = f"engine {socket.gethostname()}:{dead.proc.pid}:"
    return sum(1 for line in watcher.output().splitlines() if engine in line and " is dead (" in line)


@contextmanager
def caught_in_flight(
    fake: FakeServer, database_url: str, project: str, pid: int, at_least: int = 10
) -> Iterator[None]:
    """Inside, the process (sending as `project`, engine pid `pid`) has at least `at_least` requests sent
    and not stored, and they stay unanswered for seconds: the fault the caller strikes inside lands with
    them in flight. The fake answers at its old speed again after."""
    latency = fake.config.latency
    fake.config.latency = SLOW_ANSWERS
    try:
        wait_for(
            lambda: at_stake_of(fake, database_url, project, pid) >= at_least,
            60,
            explain=lambda: _counts(fake, database_url, project, pid),
        )
        yield
    finally:
        fake.config.latency = latency


def _counts(fake: FakeServer, database_url: str, project: str, pid: int) -> str:
    stats = fake.stats()
    seen = {k: stats[k] for k in ("received", "answered", "in_flight")}
    return f"{project} sent {sent_by(fake, project)}, stored {stored_successes(database_url, pid)}; {seen}"


def at_stake_in_all(fake: FakeServer, database_url: str) -> int:
    """In flight + answered - stored, over every process: what a fault to all of them (or to the only one
    sending) put at stake, when read after it."""
    stats = fake.stats()
    return int(stats["in_flight"]) + int(stats["answered"]) - stored_successes(database_url)


def tagged(database_url: str, name: str) -> str:
    """The database URL a process should use so that PostgreSQL names its connections `name` (its
    `application_name`, seen in pg_stat_activity); SQLite's URL as it is."""
    url = make_url(database_url)
    return database_url if url.get_backend_name() == "sqlite" else f"{database_url}?application_name={name}"


def pause_holding_no_lock(worker: Worker, database_url: str, name: str, tries: int = 20) -> None:
    """SIGSTOP `worker` at a moment it holds no lock another process needs, so whoever watches it can bury
    it (the fence path), whatever the backend.

    SQLite: this process takes the write lock first (BEGIN IMMEDIATE waits for the holder to commit), stops
    the worker, waits until every thread of it is stopped (a thread woken from waiting for the lock, not yet
    stopped, would take the lock on its way out as soon as it is let go) and lets the lock go. PostgreSQL:
    the worker's connections (tagged `name`, see `tagged`) must all be idle, outside any transaction, and
    stay so; if one is not, the worker is resumed and stopped again a moment later.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=60, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            worker.pause()
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    db = Database(database_url)
    try:
        for _ in range(tries):
            worker.pause()
            if _idle_and_still(db, name):
                return
            worker.resume()
            time.sleep(0.05)  # not a synchronisation: a moment for it to move on before trying again
    finally:
        db.engine.dispose()
    raise AssertionError(f"{name} was inside a transaction at each of {tries} tries")


def _idle_and_still(db: Database, name: str) -> bool:
    """The connections named `name` are all idle outside a transaction, and none changed state over half a
    second (a statement it sent just before it stopped would have made one active)."""
    query = text(
        "SELECT pid, state, state_change FROM pg_stat_activity WHERE application_name = :name ORDER BY pid"
    )

    def sample() -> list[tuple[object, ...]]:
        with db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query, {"name": name})]

    first = sample()
    time.sleep(0.5)
    return bool(first) and all(row[1] == "idle" for row in first) and sample() == first
