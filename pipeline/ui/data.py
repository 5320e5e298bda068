"""The web view's pages as JSON: the batches list (with the accounts and their limits) and one batch.

A batch's summary is `status --json`'s report itself (`report.batch_report`), so the page, the shareable
report and `status` never disagree; its charts come from `charts.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from pipeline.prices import PriceTable
from pipeline.report import FRESH_SECONDS, batch_report, batch_row, iso, money
from pipeline.store import batch_rates, batches, usage
from pipeline.store.db import Database
from pipeline.store.models import Batch, LimitState, utcnow
from pipeline.ui import charts

#: Batches the list shows.
LIST_LIMIT = 100


def batches_page(db: Database, prices: PriceTable, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """The newest batches (state, counts, cost so far and cap, priority and share) and the accounts."""
    rows = batches.list_batches(db, limit)
    ids = [b.id for b, _ in rows]
    shares = batch_rates.shares(db, [b.id for b, c in rows if c["queued"] + c["running"]])
    spent = usage.usage_of(db, ids)
    items = []
    for batch, counts in rows:
        cost, unpriced, _ = money(spent[batch.id], prices)
        items.append(
            {
                **batch_row(batch, counts),
                "priority": batch.priority,
                "share": shares.get(batch.id, {}).get("share"),
                "share_rpm": shares.get(batch.id, {}).get("sent_rpm"),
                "cost_usd": round(cost, 6),
                "unpriced_models": unpriced,
                "via": batch.via.value,
                "dispatch": batch.dispatch.value,
                "base_url": batch.base_url,
                "key_fingerprint": batch.key_fingerprint,
            }
        )
    return {"batches": items, "accounts": accounts(db), "now": iso(utcnow())}


def accounts(db: Database) -> list[dict[str, Any]]:
    """Every API and key the engines saw, with the limits in force per model and the recent send rates."""
    with db.read() as s:
        states = s.scalars(
            select(LimitState).order_by(LimitState.base_url, LimitState.key_fingerprint, LimitState.model)
        ).all()
    now = utcnow()
    fresh = now - timedelta(seconds=FRESH_SECONDS)
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for st in states:
        grouped.setdefault((st.base_url, st.key_fingerprint), []).append(
            {
                "model": st.model,
                "rpm": st.rpm,
                "rpm_source": st.rpm_source,
                "tpm": st.tpm,
                "tpm_source": st.tpm_source,
                "sent_rpm": st.sent_rpm if st.updated_at >= fresh else 0.0,
                "sent_tpm": st.sent_tpm if st.updated_at >= fresh else 0.0,
                "cooldown_until": iso(st.cooldown_until)
                if st.cooldown_until and st.cooldown_until > now
                else None,
                "updated_at": iso(st.updated_at),
            }
        )
    return [
        {"base_url": base_url, "key_fingerprint": fingerprint, "models": models}
        for (base_url, fingerprint), models in grouped.items()
    ]


def batch_page(db: Database, batch: Batch, prices: PriceTable) -> dict[str, Any]:
    """One batch: `status --json`'s report, its charts, finish reasons and failures with examples."""
    report = batch_report(db, batch, prices)
    return {
        "status": report,
        "series": charts.attempts_over_time(db, batch, prices, report["cost_usd"]),
        "finish_reasons": charts.finish_reasons(db, batch.id),
        "failures": charts.failure_examples(db, batch.id, report["failures"]),
        "models": sorted({u.model for u in usage.usage_of(db, [batch.id])[batch.id].models}),
    }
