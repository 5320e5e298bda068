"""What the fair-share tests measure, read from the database the engines wrote: who sent when."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from pipeline.store.db import open_database
from pipeline.store.models import Attempt, Request
from tests.helpers import chat_line, write_jsonl


def short_chat_file(path: Path, n: int, prefix: str) -> Path:
    """`n` small chat requests (max_tokens 8), each body unique to `prefix` (the fake counts bodies)."""
    return write_jsonl(path, [chat_line(f"{prefix}-{i}", f"{prefix} q{i}", max_tokens=8) for i in range(n)])


def send_times(database_url: str, batch_id: str) -> list[datetime]:
    """When every attempt of the batch started, in order."""
    db = open_database(database_url)
    with db.read() as s:
        stmt = (
            select(Attempt.started_at)
            .join(Request, Request.id == Attempt.request_id)
            .where(Request.batch_id == batch_id)
            .order_by(Attempt.started_at)
        )
        return list(s.scalars(stmt))


def both_running_rates(
    database_url: str, first: str, second: str, margin: float = 1.0
) -> tuple[float, float, float]:
    """Attempts per second of each batch while both were sending, and how many seconds that was: compare
    them as a ratio (the same window for both), never with a speed.

    The window runs from the later of their first attempts to the earlier of their last ones, less
    `margin` seconds at each end (a batch's start and end are not its steady share).
    """
    a, b = send_times(database_url, first), send_times(database_url, second)
    start = max(a[0], b[0]).timestamp() + margin
    end = min(a[-1], b[-1]).timestamp() - margin
    assert end - start >= 5, f"the batches ran together for only {end - start + 2 * margin:.1f}s"

    def rate(times: list[datetime]) -> float:
        return sum(1 for t in times if start <= t.timestamp() < end) / (end - start)

    return rate(a), rate(b), end - start
