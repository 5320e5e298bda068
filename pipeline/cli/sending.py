"""How a command sends a batch: in this process with live progress, or to the workers; then the summary."""

from __future__ import annotations

import signal

import click

from pipeline import dispatch
from pipeline.accounts import batch_columns, pool_from_settings
from pipeline.cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_PAUSED,
    EXIT_SOME_FAILED,
    EXIT_STALLED,
    EXIT_TERMINATED,
)
from pipeline.cli.progress import LiveProgress
from pipeline.cli.render import part_line, print_summary
from pipeline.jobs.intake import Intake
from pipeline.prices import PriceTable, load_prices
from pipeline.report import batch_report
from pipeline.settings import Settings
from pipeline.store import batches, reuse
from pipeline.store.db import Database, first_line
from pipeline.store.models import BatchState, Dispatch, Part, PartState, Via


def send(settings: Settings, db: Database, batch_id: str) -> int:
    """Run or enqueue the batch's queued rows, the way the batch was made; returns the exit code."""
    if batches.get_batch(db, batch_id).dispatch == Dispatch.BROKER:
        enqueue(settings, db, batch_id)
        click.echo(batch_id)
        return 0
    return run_here(settings, db, batch_id)


def enqueue(settings: Settings, db: Database, batch_id: str, queue: str | None = None) -> int:
    """Hand the batch's queued rows to the workers (a batch-api batch as parts); says what it did."""
    app = dispatch.connect_broker(settings)
    made = dispatch.plan_parts(db, batch_id) if batches.get_batch(db, batch_id).via == Via.BATCH_API else 0
    sent = dispatch.enqueue(app, settings, db, batch_id, queue)
    click.echo(f"{sent} messages enqueued for the workers", err=True)
    if made:
        click.echo(f"{made} parts for the Batch API, advanced by the workers", err=True)
    return sent


def run_here(settings: Settings, db: Database, batch_id: str) -> int:
    """Send the batch's queued rows in this process with live progress; summary to stderr, id to stdout."""
    pool = pool_from_settings(settings)
    pool.require_keys()
    prices = load_prices(settings)  # a bad prices file is reported before anything is sent
    batches.retarget(db, batch_id, **batch_columns(pool))
    counts = batches.status_counts(db, batch_id)
    stopped_by: int | None = signal.SIGINT
    try:
        if batches.get_batch(db, batch_id).via == Via.BATCH_API:
            finish = dispatch.run_batch_api_here(settings, db, batch_id, on_change=_print_part)
            stopped_by = signal.SIGINT if finish.interrupted else None
            if finish.open_parts:
                click.echo(
                    f"{finish.open_parts} parts are still with the Batch API; run the same command again "
                    "to collect their answers",
                    err=True,
                )
        else:
            done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            with LiveProgress(counts["total"], done, settings.progress_seconds) as progress:
                stats = dispatch.run_here(settings, db, batch_id, on_start=progress.attach)
            if stats.stalled is not None:
                return _stalled(db, batch_id, stats.stalled, prices)
            stopped_by = stats.stopped_by
    except KeyboardInterrupt:  # the second Ctrl-C: stopped at once, every transaction whole
        click.echo("interrupted again: stopped without waiting for the requests in flight", err=True)
    batch = batches.get_batch(db, batch_id)
    report = batch_report(db, batch, prices)
    print_summary(report)
    click.echo(batch_id)
    left = report["queued"] + report["running"]
    if stopped_by is not None and left:
        click.echo(
            f"interrupted: {left} requests not sent yet; run the same command again to continue "
            f"(or: pipeline resume {batch_id})",
            err=True,
        )
        return EXIT_INTERRUPTED if stopped_by == signal.SIGINT else EXIT_TERMINATED
    if batch.state == BatchState.PAUSED:
        return EXIT_PAUSED
    return 0 if report["succeeded"] == report["total"] else EXIT_SOME_FAILED


def _stalled(db: Database, batch_id: str, reason: str, prices: PriceTable) -> int:
    """The run stopped because the database refused writes: what is known, and how to continue."""
    try:  # reads may still work (a full disk), or not (a database down)
        print_summary(batch_report(db, batches.get_batch(db, batch_id), prices))
    except Exception as exc:
        click.echo(f"(no summary: {first_line(exc)})", err=True)
    click.echo(batch_id)
    click.echo(
        f"{reason}: sending stopped. Once the database takes writes again (free space): "
        f"pipeline resume {batch_id} (or run the same command again)",
        err=True,
    )
    return EXIT_STALLED


def _print_part(part: Part) -> None:
    if part.state not in (PartState.UPLOADING, PartState.CREATING):  # the step's outcome says enough
        click.echo(part_line(part), err=True)


def report_intake(settings: Settings, db: Database, intake: Intake, verb: str) -> None:
    """What intake stored, on stderr: requests, invalid lines, and answers reused or reusable."""
    click.echo(f"{verb} {intake.total:,} requests as batch {intake.batch_id}", err=True)
    if intake.invalid:
        click.echo(f"{intake.invalid:,} invalid line(s) recorded as failed", err=True)
    if intake.reused:
        click.echo(
            f"{intake.reused:,} requests answered from identical stored answers (--reuse): not sent, no cost",
            err=True,
        )
        return
    same = reuse.identical(db, intake.batch_id)
    count = sum(n for _, n, *_ in same)
    if count:
        prices = load_prices(settings)
        saved = [prices.cost(m or "", "direct", p, 0, c, a) for m, _, p, c, a in same]
        usd = f"${sum(x for x in saved if x is not None):,.4f}" + (" or more" if None in saved else "")
        click.echo(
            f"{count:,} requests are identical to stored answers; --reuse would answer them from the "
            f"store and save about {usd}",
            err=True,
        )
