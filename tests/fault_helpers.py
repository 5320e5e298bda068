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
"""

from __future__ import annotations

import socket
import sqlite3
import time

from sqlalchemy import func, make_url, select, text

from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database
from pipeline.store.models import Request, RequestStatus
from tests.services import Worker


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
