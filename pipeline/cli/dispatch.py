"""Sending a batch's queued rows the way the batch was made: in this process, or to the workers."""

from __future__ import annotations

import asyncio

import click

from pipeline import store
from pipeline.broker import check_broker, make_celery, publish_chunks
from pipeline.cli.progress import LiveProgress
from pipeline.cli.render import print_summary
from pipeline.db import Database
from pipeline.models import BatchState, Dispatch
from pipeline.runner import new_event_loop, run_batch
from pipeline.settings import Settings

#: Some requests of the batch failed or were cancelled (the rest are stored).
EXIT_SOME_FAILED = 3
#: The batch paused (for example the account ran out of quota); `pipeline resume` continues it.
EXIT_PAUSED = 5


def dispatch(settings: Settings, db: Database, batch_id: str) -> int:
    """Run or enqueue the batch's queued rows; returns the exit code for the command."""
    batch = store.get_batch(db, batch_id)
    if batch.dispatch == Dispatch.BROKER:
        app = make_celery(settings)
        check_broker(app)
        store.mark_enqueued(db, batch_id)
        sent = publish_chunks(app, batch_id, store.queued_ids(db, batch_id), settings.chunk_size)
        click.echo(f"{sent} messages enqueued for the workers", err=True)
        click.echo(batch_id)
        return 0
    return run_here(settings, db, batch_id)


def run_here(settings: Settings, db: Database, batch_id: str) -> int:
    """Send the batch's queued rows in this process with live progress; summary to stderr, id to stdout."""
    settings.require_api_key()
    counts = store.status_counts(db, batch_id)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    with LiveProgress(counts["total"], done) as progress:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_batch(settings, db, batch_id, on_start=progress.attach))
    batch = store.get_batch(db, batch_id)
    counts = store.status_counts(db, batch_id)
    print_summary(db, batch, counts)
    click.echo(batch_id)
    if batch.state == BatchState.PAUSED:
        return EXIT_PAUSED
    return 0 if counts["succeeded"] == counts["total"] else EXIT_SOME_FAILED
