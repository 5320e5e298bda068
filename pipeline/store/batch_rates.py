"""How fast each batch has been sending with each key lately: what `status` and `batches` show as its share.

Every engine saves its limiter's per-batch send rates with the limit states (send/watch.py). A shared
(Redis) limiter sees every process's sends, so its figures are saved under the source "shared" (whichever
engine saves them, they are the same); an in-process limiter sees only its own, saved under the engine's
host:pid. Summing the fresh rows per key and batch thus counts every send once in every mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from pipeline.ratelimit.rules import LimitKey
from pipeline.store.db import Database
from pipeline.store.models import BatchRate
from pipeline.store.overview import FRESH_SECONDS as FRESH_SECONDS
from pipeline.store.overview import shares as shares
from pipeline.store.sql import db_clock, upsert

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
