"""How batches look on a terminal: the status report, the end-of-run summary, the batches table."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from pipeline.report import batch_row, part_line

__all__ = ["part_line", "print_report", "print_summary", "report_view"]

#: The count columns of `status` and `batches`, in order.
COUNT_COLUMNS = ("total", "queued", "running", "succeeded", "failed", "cancelled")


def report_view(report: dict[str, Any]) -> Group:
    """The status report as something rich can print (or redraw, under `status --watch`)."""
    state = report["state"] + (f" ({report['pause_reason']})" if report["pause_reason"] else "")
    lines: list[Any] = [
        Text.from_markup(f"[bold]batch {report['batch']}[/bold]  {report['source']}  {state}")
    ]
    table = Table(show_header=True, header_style="bold")
    for name in (*COUNT_COLUMNS, "in flight"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{report[n]:,}" for n in COUNT_COLUMNS), f"{report['in_flight']:,}")
    lines.append(table)
    tokens = report["tokens"]
    lines.append(
        Text(
            f"tokens: {tokens['total_tokens']:,} (prompt {tokens['prompt_tokens']:,}, cached "
            f"{tokens['cached_tokens']:,}, completion {tokens['completion_tokens']:,})   attempts: "
            f"{report['attempts']:,}   429s: {report['rate_limited']:,}   elapsed: "
            f"{report['elapsed_seconds']:.1f}s"
            + (f"   reused: {report['reused']:,}" if report["reused"] else "")
        )
    )
    lines.append(Text(money_line(report)))
    for f in report["failures"]:
        status = f"HTTP {f['http_status']}" if f["http_status"] is not None else "no answer"
        lines.append(Text(f"failed: {f['count']:,} x {f['error_type']} ({status}), e.g. {f['sample']!r}"))
    lines.append(Text(f"priority {report['priority']}" + _share(report["share"], report["share_rpm"])))
    if report["parts"]:
        lines.append(Text(f"via the Batch API: {len(report['parts'])} parts"))
        lines.append(_parts_table(report["parts"]))
    accounts = report["accounts"]
    if len(accounts) > 1 or any(a["state"] != "active" for a in accounts):
        lines.extend(Text(_account_line(a)) for a in accounts)
        return Group(*lines)
    for lim in report["limits"]:
        lines.append(
            Text(
                f"limits {lim['model']}: rpm {_limit(lim['rpm'], lim['rpm_source'])}, "
                f"tpm {_limit(lim['tpm'], lim['tpm_source'])}; sending {lim['sent_rpm']:,.0f} req/min, "
                f"{lim['sent_tpm']:,.0f} tokens/min"
                + (f"; cooling down until {lim['cooldown_until']}" if lim["cooldown_until"] else "")
            )
        )
    return Group(*lines)


def _parts_table(rows: list[dict[str, Any]]) -> Table:
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
    return table


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def usd(amount: float) -> str:
    """Dollars as people read them: cents for large sums, more digits for the small ones of a test run."""
    return f"${amount:,.2f}" if amount >= 100 else f"${amount:,.4f}" if amount >= 0.01 else f"${amount:.6f}"


def money_line(report: dict[str, Any]) -> str:
    """Cost so far, against the cap when there is one, and what has no price."""
    line = f"cost: {usd(report['cost_usd'])}"
    if report["max_cost_usd"] is not None:
        line += f" of a {usd(report['max_cost_usd'])} cap"
        if report["reserved_usd"]:
            line += f" ({usd(report['reserved_usd'])} reserved for requests in flight)"
    if report["unpriced_models"]:
        line += f"; no price for {', '.join(report['unpriced_models'])} (not counted: add them with --prices)"
    prices = report["prices"]
    return line + f"   [prices as of {prices['as_of']}, {prices.get('origin', 'shipped')} table]"


def print_report(report: dict[str, Any]) -> None:
    Console(highlight=False).print(report_view(report))


def print_summary(report: dict[str, Any]) -> None:
    """The one-paragraph end-of-run summary, on stderr."""
    line = (
        f"batch {report['batch']}: {report['succeeded']:,} succeeded, {report['failed']:,} failed, "
        f"{report['cancelled']:,} cancelled of {report['total']:,}"
    )
    unfinished = report["queued"] + report["running"]
    if unfinished:
        line += f", {unfinished:,} unfinished"
    if report["reused"]:
        line += f" ({report['reused']:,} answered from stored answers, not sent)"
    click.echo(line + f"; {report['state']}", err=True)
    tokens = report["tokens"]
    click.echo(
        f"tokens {tokens['total_tokens']:,}, attempts {report['attempts']:,}, "
        f"429s {report['rate_limited']:,}, {report['elapsed_seconds']:.1f}s; {money_line(report)}",
        err=True,
    )
    if report["state"] == "paused":
        resume = f"pipeline resume {report['batch']}"
        if report["pause_reason"] and report["pause_reason"].startswith("spend cap"):
            resume += " --max-cost USD"
        click.echo(f"paused: {report['pause_reason']} (continue with: {resume})", err=True)
    for f in report["failures"]:
        status = f"HTTP {f['http_status']}" if f["http_status"] is not None else "no answer"
        click.echo(f"  {f['count']:,} failed: {f['error_type']} ({status}), e.g. {f['sample']!r}", err=True)
    if report["failed"]:
        click.echo(f"  every failed request: pipeline errors {report['batch']}", err=True)


def _account_line(account: dict[str, Any]) -> str:
    """One account of a pool: where, active or benched (why), its limits and send rate."""
    where = account["azure_endpoint"] or account["base_url"]
    state = account["state"] + (f" ({account['reason']})" if account["reason"] else "")
    return (
        f"account {account['name']} ({where}): {state}; rpm {_limit(account['rpm'], account['rpm_source'])}, "
        f"tpm {_limit(account['tpm'], account['tpm_source'])}; sending {account['sent_rpm']:,.0f} req/min"
    )


def _limit(value: int | None, source: str | None) -> str:
    return f"{value:,} ({source})" if value else "unknown"


def _share(share: float | None, rpm: float | None) -> str:
    """A running batch's share of its key's recent requests, when it is sending."""
    if share is None or rpm is None:
        return ""
    return f"; sending {share:.0%} of its key's requests lately ({rpm:,.0f} req/min)"


def print_batches(
    rows: list[tuple[Any, dict[str, int]]], shares: dict[str, dict[str, float]] | None = None
) -> None:
    """The batches table as plain aligned columns: nothing is ever cut (a wide table wraps instead).
    `shares` (batch_rates.shares) fills in the share of the batches sending."""
    shares = shares or {}
    header = ("batch", "created", "state", *COUNT_COLUMNS, "priority", "share", "finished", "source")
    lines: list[tuple[str, ...]] = [header]
    for batch, counts in rows:
        row = batch_row(batch, counts)
        lines.append(
            (
                batch.id,
                batch.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                row["state"],
                *(f"{counts[n]:,}" for n in COUNT_COLUMNS),
                str(batch.priority),
                f"{shares[batch.id]['share']:.0%}" if batch.id in shares else "-",
                batch.finished_at.strftime("%Y-%m-%d %H:%M:%S") if batch.finished_at else "-",
                batch.source,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {header.index(n) for n in COUNT_COLUMNS}
    for line in lines:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())
