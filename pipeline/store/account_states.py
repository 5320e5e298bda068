"""Accounts benched for a batch: written by the engine that saw the account fail, read by every engine's
watch (each second) and by `status`; `pipeline resume` clears them.

A table rather than Redis: `pipeline run` on SQLite has no Redis, the bench must outlive the engine that made
it (another worker, a rerun), and status reads it with the batch. It changes rarely: one row per account
benched.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select

from pipeline.store.db import Database
from pipeline.store.models import AccountState, utcnow
from pipeline.store.sql import upsert


def bench(db: Database, batch_id: str, account: str, reason: str) -> None:
    """Record that `account` is benched for the batch, and why (the latest reason wins)."""
    row = {"batch_id": batch_id, "account": account[:128], "reason": reason, "benched_at": utcnow()}
    with db.write() as s:
        upsert(s, AccountState, "batch_id, account", [row])


def benched(db: Database, batch_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """batch id -> {account name: reason} for every benched account of these batches."""
    ids = list(batch_ids)
    found: dict[str, dict[str, str]] = {}
    if not ids:
        return found
    with db.read() as s:
        for row in s.execute(
            select(AccountState.batch_id, AccountState.account, AccountState.reason).where(
                AccountState.batch_id.in_(ids)
            )
        ):
            found.setdefault(row.batch_id, {})[row.account] = row.reason
    return found


def unbench(db: Database, batch_id: str) -> None:
    """Every account of the batch active again (`pipeline resume`)."""
    with db.write() as s:
        s.execute(delete(AccountState).where(AccountState.batch_id == batch_id))
