"""How batches look on a terminal and in --json."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.store import batches, limit_states, parts
from pipeline.store.db import Database
from pipeline.store.models import Batch, Part, RequestStatus, utcnow


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
        "via": batch.via.value,
        "parts": [part_report(part) for part in parts.parts_of(db, batch.id)],
    }


def part_report(part: Part) -> dict[str, Any]:
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
        "created_at": _iso(part.created_at),
        "finished_at": _iso(part.finished_at),
    }


def part_line(part: Part) -> str:
    """One line on a part's progress, for `run` to print as it changes."""
    counts = ""
    if part.request_total is not None:
        counts = (
            f" {part.request_completed or 0}/{part.request_total} done, {part.request_failed or 0} failed"
        )
    remote = f", remote {part.remote_status}{counts}" if part.remote_status else ""
    why = f": {_first_error(part)}" if part.errors else ""
    return f"part {part.id} ({part.model}, {part.lines} requests): {part.state.value}{remote}{why}"


def _first_error(part: Part) -> str:
    first = (part.errors or [{}])[0]
    line = f" (line {first['line']})" if first.get("line") is not None else ""
    return f"{first.get('code') or 'error'}: {first.get('message') or ''}{line}".strip()


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
    if report["parts"]:
        _print_parts(console, report["parts"])
    for lim in report["limits"]:
        console.print(
            f"limits {lim['model']}: rpm {_limit(lim['rpm'], lim['rpm_source'])}, "
            f"tpm {_limit(lim['tpm'], lim['tpm_source'])}; sending {lim['sent_rpm']:,.0f} req/min, "
            f"{lim['sent_tpm']:,.0f} tokens/min"
            + (f"; cooling down until {lim['cooldown_until']}" if lim["cooldown_until"] else "")
        )


def _print_parts(console: Console, rows: list[dict[str, Any]]) -> None:
    console.print(f"via the Batch API: {len(rows)} parts")
    table = Table(show_header=True, header_style="bold")
    for name in ("part", "model", "requests", "state", "remote", "completed", "failed", "tries", "errors"):
        table.add_column(
            name, justify="right" if name in ("requests", "completed", "failed", "tries") else "left"
        )
    for row in rows:
        counts, errors = row["request_counts"], row["errors"]
        table.add_row(
            row["part"],
            row["model"],
            str(row["lines"]),
            row["state"],
            row["remote_status"] or "-",
            _count(counts["completed"]),
            _count(counts["failed"]),
            str(row["tries"]),
            f"{errors[0].get('code')}: {errors[0].get('message')}" if errors else "",
        )
    console.print(table)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


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


def print_batches(rows: list[tuple[Batch, dict[str, int]]]) -> None:
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
    ):
        table.add_column(name, justify="left" if name in ("batch", "created", "source", "state") else "right")
    for batch, counts in rows:
        table.add_row(
            batch.id,
            batch.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            batch.source,
            batch.state,
            *(str(counts[n]) for n in ("total", "queued", "running", "succeeded", "failed", "cancelled")),
        )
    Console(highlight=False).print(table)
