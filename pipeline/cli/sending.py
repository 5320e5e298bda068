"""How a command sends a batch: in this process with live progress, or to the workers; then the summary."""

from __future__ import annotations

import signal

import click

from pipeline import dispatch
from pipeline.cli.exits import EXIT_INTERRUPTED, EXIT_PAUSED, EXIT_SOME_FAILED, EXIT_TERMINATED
from pipeline.cli.progress import LiveProgress
from pipeline.cli.render import print_summary
from pipeline.settings import Settings
from pipeline.store import batches
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
    batches.retarget(db, batch_id, settings.base_url, settings.organization, settings.key_fingerprint())
    counts = batches.status_counts(db, batch_id)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    stopped_by: int | None = signal.SIGINT
    try:
        with LiveProgress(counts["total"], done) as progress:
            stopped_by = dispatch.run_here(settings, db, batch_id, on_start=progress.attach).stopped_by
    except KeyboardInterrupt:  # the second Ctrl-C: stopped at once, every transaction whole
        click.echo("interrupted again: stopped without waiting for the requests in flight", err=True)
    batch = batches.get_batch(db, batch_id)
    counts = batches.status_counts(db, batch_id)
    print_summary(db, batch, counts)
    click.echo(batch_id)
    left = counts["queued"] + counts["running"]
    if stopped_by is not None and left:
        click.echo(
            f"interrupted: {left} requests not sent yet; run the same command again to continue "
            f"(or: pipeline resume {batch_id})",
            err=True,
        )
        return EXIT_INTERRUPTED if stopped_by == signal.SIGINT else EXIT_TERMINATED
    if batch.state == BatchState.PAUSED:
        return EXIT_PAUSED
    return 0 if counts["succeeded"] == counts["total"] else EXIT_SOME_FAILED
