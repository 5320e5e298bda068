"""What `status` reports of a batch: counts, in flight, money, tokens, failures, limits; JSON-ready.

Read from the database only, in a few cheap queries whatever the batch's size: counts by status from the
(batch_id, status) index, money and tokens from the per-batch usage counters, failures from the failed
rows alone. The keys of `batch_report` are the `status --json` contract (README, "--json contracts"). The
queries are store/overview.py's, on SQLAlchemy Core: `status` never loads the ORM. A batch or a part may
be a stored model (the web view's) or overview's plain record of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.prices import PriceTable
from pipeline.store import overview
from pipeline.store.db import Database
from pipeline.store.overview import BatchFields, BatchTotals, FailureGroup, PartFields
from pipeline.store.states import BatchState, utcnow

#: A saved limiter state older than this is not "current" (no engine is using the key now).
FRESH_SECONDS = 30


def batch_report(
    db: Database, batch: BatchFields, prices: PriceTable, counts: dict[str, int] | None = None
) -> dict[str, Any]:
    """Everything `status` shows, as plain JSON-ready values."""
    counts = counts or overview.status_counts(db, batch.id)
    totals = overview.usage_of(db, [batch.id])[batch.id]
    final = BatchState(batch.state).final
    end = batch.finished_at if final and batch.finished_at else utcnow()
    on_wire, reserved = (0, 0.0) if final else overview.in_flight(db, batch.id)
    failures = overview.failure_groups(db, batch.id)
    cost, unpriced, by_model = money(totals, prices)
    return {
        "batch": batch.id,
        "source": batch.source,
        "state": str(batch.state),
        "pause_reason": batch.pause_reason,
        "created_at": iso(batch.created_at),
        "first_sent_at": iso(totals.first_sent_at),
        "finished_at": iso(batch.finished_at) if final else None,
        "elapsed_seconds": round((end - batch.created_at).total_seconds(), 3),
        **counts,
        "in_flight": on_wire,
        "reused": batch.reused,
        "tokens": {
            "prompt_tokens": totals.total("prompt_tokens"),
            "cached_tokens": totals.total("cached_tokens"),
            "completion_tokens": totals.total("completion_tokens"),
            "total_tokens": totals.total("total_tokens"),
            "audio_seconds": round(sum(u.audio_seconds for u in totals.models), 3),
            "reasoning_tokens": totals.total("reasoning_tokens"),
        },
        "attempts": totals.total("attempts"),
        "rate_limited": totals.total("rate_limited"),
        "cost_usd": round(cost, 6),
        "reserved_usd": round(reserved, 6),
        "max_cost_usd": batch.max_cost_usd,
        "unpriced_models": unpriced,
        "cost_by_model": by_model,
        "prices": {"as_of": prices.as_of, "source": prices.source, "origin": prices.origin},
        "errors": {g: n for g, n in _by_type(failures).items()},
        "failures": [
            {"error_type": f.error_type, "http_status": f.http_status, "count": f.count, "sample": f.sample}
            for f in failures
        ],
        "limits": _limits(db, batch),
        "accounts": accounts_report(db, batch),
        "via": batch.via.value,
        "parts": [part_report(part) for part in overview.parts_of(db, batch.id)],
        **fair_share(db, batch, counts["queued"] + counts["running"]),
    }


def fair_share(db: Database, batch: BatchFields, unfinished: int) -> dict[str, Any]:
    """The batch's priority, and while it runs its share of its key's recent send rate (0..1) and its own
    rate (requests/min); None when it is not sending."""
    sending = overview.shares(db, [batch.id]).get(batch.id) if unfinished else None
    return {
        "priority": batch.priority,
        "share": sending["share"] if sending else None,
        "share_rpm": sending["sent_rpm"] if sending else None,
    }


def part_report(part: PartFields) -> dict[str, Any]:
    """One Batch API part, as `status --json` shows it."""
    return {
        "part": part.id,
        "endpoint": part.endpoint,
        "model": part.model,
        "lines": part.lines,
        "state": part.state.value,
        "remote_batch_id": part.remote_batch_id,
        "remote_status": part.remote_status,
        "request_counts": {
            "total": part.request_total,
            "completed": part.request_completed,
            "failed": part.request_failed,
        },
        "tries": part.tries,
        "input_file_id": part.input_file_id,
        "output_file_id": part.output_file_id,
        "error_file_id": part.error_file_id,
        "errors": part.errors or [],
        "created_at": iso(part.created_at),
        "finished_at": iso(part.finished_at),
    }


def part_line(part: PartFields) -> str:
    """One line on a part's progress, for `run` to print as it changes."""
    counts = ""
    if part.request_total is not None:
        counts = (
            f" {part.request_completed or 0}/{part.request_total} done, {part.request_failed or 0} failed"
        )
    remote = f", remote {part.remote_status}{counts}" if part.remote_status else ""
    why = f": {_first_error(part)}" if part.errors else ""
    return f"part {part.id} ({part.model}, {part.lines} requests): {part.state.value}{remote}{why}"


def _first_error(part: PartFields) -> str:
    first = (part.errors or [{}])[0]
    line = f" (line {first['line']})" if first.get("line") is not None else ""
    return f"{first.get('code') or 'error'}: {first.get('message') or ''}{line}".strip()


def money(totals: BatchTotals, prices: PriceTable) -> tuple[float, list[str], dict[str, float]]:
    """(USD charged, models without a price that were charged, USD per model) of a batch's counters."""
    cost, unpriced, by_model = 0.0, set(), dict[str, float]()
    for u in totals.models:
        usd = prices.cost(
            u.model, u.tier, u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.audio_seconds
        )
        if usd is None:
            if u.charged:
                unpriced.add(u.model)
            continue
        cost += usd
        by_model[u.model] = round(by_model.get(u.model, 0.0) + usd, 6)
    return cost, sorted(unpriced), by_model


def _by_type(failures: list[FailureGroup]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in failures:
        counts[f.error_type] = counts.get(f.error_type, 0) + f.count
    return counts


def accounts_report(db: Database, batch: BatchFields) -> list[dict[str, Any]]:
    """Each account the batch is sent through (its own, outside pools): what it is (no key), active or
    benched and why, and its limits in force with the recent send rate (summed over its models)."""
    spec = batch.accounts or [
        {
            "name": "default",
            "api_key_env": None,
            "key_fingerprint": batch.key_fingerprint,
            "base_url": batch.base_url,
            "organization": batch.organization,
        }
    ]
    benched = overview.benched(db, [batch.id]).get(batch.id, {})
    accounts = []
    for item in spec:
        name = str(item["name"])
        limits = _limits(db, batch, str(item["base_url"]), str(item["key_fingerprint"]))
        first = limits[0] if limits else {}
        accounts.append(
            {
                **{k: item.get(k) for k in ACCOUNT_KEYS},
                "state": "benched" if name in benched else "active",
                "reason": benched.get(name),
                "rpm": first.get("rpm"),
                "rpm_source": first.get("rpm_source"),
                "tpm": first.get("tpm"),
                "tpm_source": first.get("tpm_source"),
                "sent_rpm": round(sum(x["sent_rpm"] or 0.0 for x in limits), 1),
                "limits": limits,
            }
        )
    return accounts


#: What `status --json` shows of each account's spec.
ACCOUNT_KEYS = (
    "name",
    "base_url",
    "azure_endpoint",
    "api_version",
    "organization",
    "project",
    "api_key_env",
    "key_fingerprint",
    "deployments",
)


def _limits(
    db: Database, batch: BatchFields, base_url: str | None = None, fingerprint: str | None = None
) -> list[dict[str, Any]]:
    """The limits in force for the batch's API and key (or another account's), with the recent send rate
    where it is fresh."""
    states = overview.limit_states(db, base_url or batch.base_url, fingerprint or batch.key_fingerprint)
    now = utcnow()
    return [
        {
            "model": st.model,
            "rpm": st.rpm,
            "rpm_source": st.rpm_source,
            "tpm": st.tpm,
            "tpm_source": st.tpm_source,
            "sent_rpm": st.sent_rpm if (now - st.updated_at).total_seconds() < FRESH_SECONDS else 0.0,
            "sent_tpm": st.sent_tpm if (now - st.updated_at).total_seconds() < FRESH_SECONDS else 0.0,
            "cooldown_until": iso(st.cooldown_until)
            if st.cooldown_until and st.cooldown_until > now
            else None,
            "updated_at": iso(st.updated_at),
        }
        for st in states
    ]


def batch_row(batch: BatchFields, counts: dict[str, int]) -> dict[str, Any]:
    """One batch as `batches --json` lists it."""
    return {
        "batch": batch.id,
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
        "source": batch.source,
        "state": str(batch.state),
        "pause_reason": batch.pause_reason,
        "max_cost_usd": batch.max_cost_usd,
        **counts,
    }


def iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None
