"""How a command sends a batch: in this process with live progress, or to the workers; then the summary."""

from __future__ import annotations

import signal

import click

from pipeline import dispatch
from pipeline.cli.exits import EXIT_INTERRUPTED, EXIT_PAUSED, EXIT_SOME_FAILED, EXIT_TERMINATED
from pipeline.cli.progress import LiveProgress
from pipeline.cli.render import print_summary
from pipeline.jobs.intake import Intake
from pipeline.prices import load_prices
from pipeline.report import batch_report
from pipeline.settings import Settings
from pipeline.store import batches, reuse
from pipeline.store.db import Database
from pipeline.store.models import BatchState, Dispatch


def send(settings: Settings, db: Database, batch_id: str) -> int:
    """Run or enqueue the batch's queued rows, the way the batch was made; returns the exit code."""
    if batches.get_batch(db, batch_id).dispatch == Dispatch.BROKER:
        sent = dispatch.enqueue(dispatch.connect_broker(settings), settings, db, batch_id)
        click.echo(f"{sent} messages enqueued for the workers", err=True)
        click.echo(batch_id)
        return 0
    return run_here(settings, db, batch_id)


def run_here(settings: Settings, db: Database, batch_id: str) -> int:
    """Send the batch's queued rows in this process with live progress; summary to stderr, id to stdout."""
    settings.require_api_key()
    prices = load_prices(settings.prices_file)  # a bad prices file is reported before anything is sent
    batches.retarget(db, batch_id, settings.base_url, settings.organization, settings.key_fingerprint())
    counts = batches.status_counts(db, batch_id)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    stopped_by: int | None = signal.SIGINT
    try:
        with LiveProgress(counts["total"], done, settings.progress_seconds) as progress:
            stopped_by = dispatch.run_here(settings, db, batch_id, on_start=progress.attach).stopped_by
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
        prices = load_prices(settings.prices_file)
        saved = [prices.cost(m or "", "direct", p, 0, c, a) for m, _, p, c, a in same]
        usd = f"${sum(x for x in saved if x is not None):,.4f}" + (" or more" if None in saved else "")
        click.echo(
            f"{count:,} requests are identical to stored answers; --reuse would answer them from the "
            f"store and save about {usd}",
            err=True,
        )
