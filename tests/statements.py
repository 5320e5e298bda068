"""Counting the SQL a process sends: statements through SQLAlchemy (its `before_cursor_execute` event) and
rows through the store's driver-level executemany (store/sql.py), grouped by verb and table.

Used by tests/test_statements.py, and by bench/bench_statements.py to print where the statements go.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, event

from pipeline.store import sql

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+\"?(\w+)", re.IGNORECASE)


def kind(statement: str) -> str:
    """'INSERT attempts', 'SELECT workers', 'BEGIN'...: the verb and the first table a statement names."""
    words = statement.split(None, 1)
    verb = words[0].upper() if words else "?"
    table = _TABLE.search(statement)
    return f"{verb} {table.group(1)}" if table and verb not in ("BEGIN", "COMMIT", "PRAGMA") else verb


@dataclass
class Counts:
    """What was sent: `calls` (round trips: an executemany is one), `statements` (an executemany counts
    each row), `commits`, and statements by kind."""

    calls: int = 0
    statements: int = 0
    commits: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)  #: the engine writes from threads

    def add(self, statement: str, rows: int) -> None:
        with self.lock:
            self.calls += 1
            self.statements += rows
            self.kinds[kind(statement)] += rows

    def commit(self) -> None:
        with self.lock:
            self.commits += 1

    def per(self, requests: int) -> str:
        """The counts per request, most frequent kinds first."""
        top = ", ".join(f"{k} {n / requests:.3f}" for k, n in self.kinds.most_common())
        return (
            f"{self.statements / requests:.3f} statements, {self.calls / requests:.3f} calls,"
            f" {self.commits / requests:.3f} commits per request ({top})"
        )


#: The modules whose store functions `pipeline run` and `pipeline worker` use, imported before counting.
SENDERS = ("pipeline.cli.run_cmds", "pipeline.cli.fleet_cmds", "pipeline.send.engine", "pipeline.jobs.intake")


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    """Count what every engine and the store's executemany send while the block runs."""
    counts = Counts()

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        counts.add(statement, len(params) if many else 1)

    def commit(conn: Any) -> None:
        counts.commit()

    original = sql.executemany

    def executemany(session: Any, statement: str, rows: Sequence[Mapping[str, Any]]) -> int:
        if rows:
            counts.add(statement, len(rows))
        return original(session, statement, rows)

    for name in SENDERS:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):  # every store module that imported it by name
        if name.startswith("pipeline.") and getattr(module, "executemany", None) is original:
            monkeypatch.setattr(module, "executemany", executemany)
    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "commit", commit)
    try:
        yield counts
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "commit", commit)
