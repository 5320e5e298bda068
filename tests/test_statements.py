"""The hot path's SQL, counted: a `pipeline run` sends a bounded number of statements per request.

Counted with SQLAlchemy's `before_cursor_execute` event and around the store's driver-level executemany
(tests/statements.py), on a real run of REQUESTS rows against the fake, on SQLite and PostgreSQL. Counts,
never timings: but how many outcomes one write transaction gathers follows the sending rate, and the
periodic reads follow the run's length, so those bounds carry a margin for a slow or loaded machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.fakeapi import FakeServer
from pipeline.store.claims import CLAIMED_COLUMNS, Claimed
from tests.conftest import invoke
from tests.helpers import chat_file
from tests.statements import counting

REQUESTS = 2000
#: The rows every request writes: inserted at intake, then its attempt, its result, its final status
#: (claims add an UPDATE of requests per piece claimed, not per request).
ROWS = ("INSERT requests", "INSERT attempts", "INSERT results", "UPDATE requests")
#: Measured when this test was written (issue 19, 2026-12): 4.00 of those rows per request; 0.11
#: (PostgreSQL) to 0.29 (SQLite) other statements per request (each write transaction's BEGIN and
#: counters, the claims, the watch's reads every second, the first use's migration); 0.09 (PostgreSQL) to
#: 0.24 (SQLite) calls to the driver per request (an executemany is one). The bounds are those plus a
#: margin for smaller transactions and a longer run on a loaded machine; the hot-path rewrite will
#: tighten them.
MAX_ROWS_PER_REQUEST = 4.02
MAX_OTHER_PER_REQUEST = 1.5
MAX_CALLS_PER_REQUEST = 1.0


@pytest.mark.integration
def test_run_sends_a_bounded_number_of_statements_per_request(
    fake: FakeServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = chat_file(tmp_path / "jobs.jsonl", REQUESTS)
    with counting(monkeypatch) as counts:
        result = invoke("run", str(jobs), "--base-url", fake.url, "--database-url", database_url)
    assert result.exit_code == 0, result.stderr
    assert fake.stats()["received"] == REQUESTS  # no retries: every count below is the hot path's own
    seen = counts.per(REQUESTS)
    rows = sum(counts.kinds[k] for k in ROWS)
    assert all(counts.kinds[k] >= REQUESTS for k in ROWS), seen
    assert rows / REQUESTS <= MAX_ROWS_PER_REQUEST, seen
    assert (counts.statements - rows) / REQUESTS <= MAX_OTHER_PER_REQUEST, seen
    assert counts.calls / REQUESTS <= MAX_CALLS_PER_REQUEST, seen


def test_claimed_rows_are_built_in_the_order_of_claimed_fields() -> None:
    """Claims build each `Claimed` from the row positionally (no dict per row): the columns must keep the
    dataclass's field order."""
    names = tuple(column.key for column in CLAIMED_COLUMNS)
    assert names == tuple(f.name for f in dataclasses.fields(Claimed))[: len(names)]
    assert [f.name for f in dataclasses.fields(Claimed)][len(names) :] == ["worker"]
