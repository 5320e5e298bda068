"""Commands for the broker mode: submit a file for workers, run a worker."""

from __future__ import annotations

import os
import socket
from typing import Any

import click

from pipeline import dispatch
from pipeline.cli.options import api_options, broker_options, database, pop_settings, store_options
from pipeline.cli.priority_cmds import apply_priority, priority_option
from pipeline.cli.run_cmds import endpoint_option, force_option, skip_invalid_option, store_from_params
from pipeline.errors import DuplicateBatch
from pipeline.fleet.broker import DEFAULT_QUEUE
from pipeline.fleet.worker import install
from pipeline.ratelimit import limit_table


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@force_option
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Broker queue for this batch")
@click.option("--chunk-size", type=int, help="Requests per message [env PIPELINE_CHUNK_SIZE; 500]")
@priority_option
@broker_options
@store_options
def submit(**params: Any) -> None:
    """Validate FILE, store it as a batch and enqueue it for `pipeline worker` processes; returns at once.

    One message is capacity for a chunk of requests: workers claim the requests of the batches running on
    the queue by fair share, so a batch submitted after a big one does not wait for it. The batch id is
    the last line of stdout. A file whose content was submitted before is not enqueued again: its batch id
    is printed (use --force for a new one).
    """
    queue, priority = params.pop("queue"), params.pop("priority")
    settings = pop_settings(params)
    db = database(settings)
    app = dispatch.connect_broker(settings)  # before intake: a batch nobody can receive is not stored
    try:
        intake = store_from_params(db, settings, params)
    except DuplicateBatch as dup:
        click.echo(f"{dup}; not enqueued again (use --force for a new batch)", err=True)
        apply_priority(db, dup.batch_id, priority)
        click.echo(dup.batch_id)
        return
    apply_priority(db, intake.batch_id, priority)  # before the workers can claim it
    messages = dispatch.enqueue(app, settings, db, intake.batch_id, queue)
    click.echo(
        f"stored {intake.total} requests as batch {intake.batch_id}; {messages} messages enqueued", err=True
    )
    if intake.invalid:
        click.echo(f"{intake.invalid} invalid line(s) recorded as failed", err=True)
    click.echo(intake.batch_id)


@click.command()
@click.option("--concurrency", type=int, default=4, show_default=True, help="Chunks worked on at once")
@click.option("--queues", default=DEFAULT_QUEUE, show_default=True, help="Comma-separated queues to consume")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--chunk-size", type=int, help="Requests per re-published message [env PIPELINE_CHUNK_SIZE]")
@api_options
@broker_options
@store_options
def worker(concurrency: int, queues: str, loglevel: str, **params: Any) -> None:
    """Run a Celery worker in the foreground: consumes chunks, sends their requests with one engine.

    Hundreds of requests are in flight per process (--max-in-flight), shared by --concurrency chunks.
    SIGTERM drains: in-flight requests finish and are stored, the rest go back to the queue, exit 0.
    Rows left running by a dead worker are re-queued by the others when their lease expires.
    """
    settings = pop_settings(params)
    settings.require_api_key()
    limit_table(settings)  # a bad limits file stops the worker here, not in every task
    database(settings)
    app = dispatch.connect_broker(settings)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    install(app, settings, queue_list)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queue_list)}",
            f"--loglevel={loglevel}",
            f"--hostname=pipeline-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle",
            "--without-gossip",
        ]
    )


COMMANDS = [submit, worker]
