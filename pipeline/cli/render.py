"""How batches look on a terminal and in --json."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.store import batch_rates, batches, limit_states
from pipeline.store.db import Database
from pipeline.store.models import Batch, RequestStatus, utcnow


def batch_report(db: Database, batch: Batch, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain JSON-ready values."""
    counts = counts or batches.status_counts(db, batch.id)
    attempts = batches.attempt_stats(db, batch.id)
    unfinished = counts[RequestStatus.QUEUED] + counts[RequestStatus.RUNNING]
    end = utcnow() if unfinished or attempts["last_finished_at"] is None else attempts["last_finished_at"]
    elapsed = (end - batch.created_at).total_seconds()
    return {
        "batch": batch.id,
        "source": batch.source,
        "state": batch.state,
        "pause_reason": batch.pause_reason,
        "created_at": _iso(batch.created_at),
        "elapsed_seconds": round(elapsed, 3),
        **counts,
        "tokens": batches.token_totals(db, batch.id),
        "attempts": attempts["attempts"],
        "rate_limited": attempts["rate_limited"],
        "errors": dict(batches.error_breakdown(db, batch.id)),
        "limits": _limits(db, batch),
        **fair_share(db, batch, unfinished),
    }


def fair_share(db: Database, batch: Batch, unfinished: int) -> dict[str, Any]:
    """The batch's priority, and while it runs its share of its key's recent send rate (0..1) and its own
    rate (requests/min); None when it is not sending."""
    sending = batch_rates.shares(db, [batch.id]).get(batch.id) if unfinished else None
    return {
        "priority": batch.priority,
        "share": sending["share"] if sending else None,
        "share_rpm": sending["sent_rpm"] if sending else None,
    }


#: A saved limiter state older than this is not "current" (no engine is using the key now).
FRESH_SECONDS = 30


def _limits(db: Database, batch: Batch) -> list[dict[str, Any]]:
    """The limits in force for the batch's API and key, with the recent send rate where it is fresh."""
    states = limit_states.limit_states(db, batch.base_url, batch.key_fingerprint)
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
            "cooldown_until": _iso(st.cooldown_until)
            if st.cooldown_until and st.cooldown_until > now
            else None,
            "updated_at": _iso(st.updated_at),
        }
        for st in states
    ]


def print_report(report: dict[str, Any]) -> None:
    console = Console(stderr=False, highlight=False)
    state = report["state"] + (f" ({report['pause_reason']})" if report["pause_reason"] else "")
    console.print(f"[bold]batch {report['batch']}[/bold]  {report['source']}  {state}")
    table = Table(show_header=True, header_style="bold")
    for name in ("total", "queued", "running", "succeeded", "failed", "cancelled"):
        table.add_column(name, justify="right")
    table.add_row(
        *(str(report[n]) for n in ("total", "queued", "running", "succeeded", "failed", "cancelled"))
    )
    console.print(table)
    tokens = report["tokens"]
    console.print(
        f"tokens: {tokens['total_tokens']:,} (prompt {tokens['prompt_tokens']:,}, "
        f"completion {tokens['completion_tokens']:,})   attempts: {report['attempts']:,}   "
        f"429s: {report['rate_limited']:,}   elapsed: {report['elapsed_seconds']:.1f}s"
    )
    if report["errors"]:
        console.print("errors: " + ", ".join(f"{k} x{v}" for k, v in report["errors"].items()))
    console.print(f"priority {report['priority']}" + _share(report["share"], report["share_rpm"]))
    for lim in report["limits"]:
        console.print(
            f"limits {lim['model']}: rpm {_limit(lim['rpm'], lim['rpm_source'])}, "
            f"tpm {_limit(lim['tpm'], lim['tpm_source'])}; sending {lim['sent_rpm']:,.0f} req/min, "
            f"{lim['sent_tpm']:,.0f} tokens/min"
            + (f"; cooling down until {lim['cooldown_until']}" if lim["cooldown_until"] else "")
        )


def _share(share: float | None, rpm: float | None) -> str:
    if share is None or rpm is None:
        return ""
    return f"; sending {share:.0%} of its key's requests lately ({rpm:,.0f} req/min)"


def _limit(value: int | None, source: str | None) -> str:
    return f"{value:,} ({source})" if value else "unknown"


def print_summary(db: Database, batch: Batch, counts: dict[str, int]) -> None:
    """The one-paragraph end-of-run summary, on stderr."""
    report = batch_report(db, batch, counts)
    tokens = report["tokens"]
    line = (
        f"batch {batch.id}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled of {counts['total']}"
    )
    unfinished = counts["queued"] + counts["running"]
    if unfinished:
        line += f", {unfinished} unfinished"
    click.echo(line, err=True)
    click.echo(
        f"tokens {tokens['total_tokens']:,}, attempts {report['attempts']:,}, "
        f"429s {report['rate_limited']:,}, {report['elapsed_seconds']:.1f}s",
        err=True,
    )
    if report["state"] == "paused":
        click.echo(f"paused: {report['pause_reason']} (continue with: pipeline resume {batch.id})", err=True)
    for etype, n in report["errors"].items():
        click.echo(f"  {n} failed: {etype}", err=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def print_batches(
    rows: list[tuple[Batch, dict[str, int]]], shares: dict[str, dict[str, float]] | None = None
) -> None:
    """The batches as a table; `shares` (batch_rates.shares) fills the share of those sending."""
    shares = shares or {}
    table = Table(show_header=True, header_style="bold")
    for name in (
        "batch",
        "created",
        "source",
        "state",
        "total",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "priority",
        "share",
    ):
        table.add_column(name, justify="left" if name in ("batch", "created", "source", "state") else "right")
    for batch, counts in rows:
        share = shares.get(batch.id) if counts["queued"] + counts["running"] else None
        table.add_row(
            batch.id,
            batch.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            batch.source,
            batch.state,
            *(str(counts[n]) for n in ("total", "queued", "running", "succeeded", "failed", "cancelled")),
            str(batch.priority),
            f"{share['share']:.0%}" if share else "",
        )
    Console(highlight=False).print(table)
