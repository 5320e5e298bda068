"""How fast each batch has been sending with each key lately: what `status` and `batches` show as its share.

Every engine saves its limiter's per-batch send rates with the limit states (send/watch.py). A shared
(Redis) limiter sees every process's sends, so its figures are saved under the source "shared" (whichever
engine saves them, they are the same); an in-process limiter sees only its own, saved under the engine's
host:pid. Summing the fresh rows per key and batch thus counts every send once in every mode.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from pipeline.ratelimit.rules import LimitKey
from pipeline.store.db import Database
from pipeline.store.models import BatchRate
from pipeline.store.sql import db_clock, upsert

#: A rate saved longer ago than this is not "current": its engine stopped sending, or stopped.
FRESH_SECONDS = 30
#: Rates older than this are deleted when an engine saves its own.
KEEP_SECONDS = 3600
#: The source under which a shared limiter's rates are saved.
SHARED = "shared"


def save_batch_rates(db: Database, source: str, snapshots: Sequence[tuple[LimitKey, dict[str, Any]]]) -> None:
    """Save the per-batch send rates (`batch_rpm`) of limiter snapshots; a shared one's under SHARED."""
    with db.write() as s:
        now = db_clock(s)
        rows = [
            {
                "key": str(key),
                "batch_id": batch_id,
                "source": SHARED if snap.get("shared") else source,
                "sent_rpm": float(rpm),
                "updated_at": now,
            }
            for key, snap in snapshots
            for batch_id, rpm in (snap.get("batch_rpm") or {}).items()
        ]
        upsert(s, BatchRate, "key, batch_id, source", rows)
        s.execute(delete(BatchRate).where(BatchRate.updated_at < now - timedelta(seconds=KEEP_SECONDS)))


def shares(db: Database, batch_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """For each of these batches sending lately: its requests/min (`sent_rpm`) and its share of what was
    sent with the keys it used (`share`, 0..1). Batches not sending lately are left out."""
    wanted = set(batch_ids)
    if not wanted:
        return {}
    with db.read() as s:
        since = db_clock(s) - timedelta(seconds=FRESH_SECONDS)
        rows = s.execute(
            select(BatchRate.key, BatchRate.batch_id, BatchRate.sent_rpm).where(BatchRate.updated_at >= since)
        ).all()
    per_key: dict[str, float] = defaultdict(float)
    mine: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, batch_id, rpm in rows:
        per_key[key] += rpm
        if batch_id in wanted:
            mine[batch_id][key] += rpm
    result: dict[str, dict[str, float]] = {}
    for batch_id, keys in mine.items():
        sent, total = sum(keys.values()), sum(per_key[k] for k in keys)
        if sent > 0 and total > 0:
            result[batch_id] = {"sent_rpm": round(sent, 1), "share": round(sent / total, 3)}
    return result
