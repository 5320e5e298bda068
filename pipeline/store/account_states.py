"""Accounts benched for a batch: written by the engine that saw the account fail, read by every engine's
watch (each second) and by `status`; `pipeline resume` clears them.

A table rather than Redis: `pipeline run` on SQLite has no Redis, the bench must outlive the engine that made
it (another worker, a rerun), and status reads it with the batch. It changes rarely: one row per account
benched.
"""

from __future__ import annotations

from sqlalchemy import delete

from pipeline.store.db import Database
from pipeline.store.models import AccountState, utcnow
from pipeline.store.overview import benched as benched
from pipeline.store.sql import upsert


def bench(db: Database, batch_id: str, account: str, reason: str) -> None:
    """Record that `account` is benched for the batch, and why (the latest reason wins)."""
    row = {"batch_id": batch_id, "account": account[:128], "reason": reason, "benched_at": utcnow()}
    with db.write() as s:
        upsert(s, AccountState, "batch_id, account", [row])


def unbench(db: Database, batch_id: str) -> None:
    """Every account of the batch active again (`pipeline resume`)."""
    with db.write() as s:
        s.execute(delete(AccountState).where(AccountState.batch_id == batch_id))
