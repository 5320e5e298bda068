"""Commands for the broker mode: submit a file for workers, run a worker."""

from __future__ import annotations

import os
import socket
from typing import Any

import click

from pipeline import dispatch
from pipeline.cli.options import (
    account_options,
    api_options,
    broker_options,
    database,
    max_cost_option,
    metrics_option,
    pop_settings,
    prices_option,
    store_options,
)
from pipeline.cli.priority_cmds import apply_priority, priority_option
from pipeline.cli.run_cmds import (
    audio_root_option,
    endpoint_option,
    force_option,
    note_way,
    reuse_option,
    skip_invalid,
    store_from_params,
    way_options,
)
from pipeline.cli.sending import report_intake
from pipeline.errors import DuplicateBatch
from pipeline.fleet.broker import DEFAULT_QUEUE
from pipeline.fleet.worker import install
from pipeline.prices import load_prices
from pipeline.ratelimit import limit_table
from pipeline.store.models import Via


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid(
    "Store and enqueue the valid lines; record the invalid ones as failed "
    "(without it: exit 4, nothing stored)"
)
@force_option
@way_options
@reuse_option
@audio_root_option
@max_cost_option
@prices_option
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Broker queue for this batch")
@click.option("--chunk-size", type=int, help="Requests per message [env PIPELINE_CHUNK_SIZE; 500]")
@priority_option
@account_options
@broker_options
@store_options
def submit(**params: Any) -> None:
    """Validate FILE, store it as a batch and enqueue it for `pipeline worker` processes; returns at once.

    One message is capacity for a chunk of requests: workers claim the requests of the batches running on
    the queue by fair share, so a batch submitted after a big one does not wait for it. The batch id is
    the last line of stdout. A file whose content was submitted before is not enqueued again: its batch id
    is printed (use --force for a new one). With --via batch-api the batch is cut into Batch API parts
    here, and the workers upload, create and poll them (any worker, one at a time per part).
    """
    queue, priority = params.pop("queue"), params.pop("priority")
    settings = pop_settings(params)
    load_prices(settings)  # a bad prices file stores nothing
    db = database(settings)
    app = dispatch.connect_broker(settings)  # before intake: a batch nobody can receive is not stored
    asked = params.get("via")
    try:
        intake = store_from_params(db, settings, params)
    except DuplicateBatch as dup:
        click.echo(f"{dup}; not enqueued again (use --force for a new batch)", err=True)
        note_way(db, dup.batch_id, {"via": asked})
        apply_priority(db, dup.batch_id, priority)
        click.echo(dup.batch_id)
        return
    apply_priority(db, intake.batch_id, priority)  # before the workers can claim it
    made = dispatch.plan_parts(db, intake.batch_id) if asked == Via.BATCH_API.value else 0
    report_intake(settings, db, intake, "stored")
    messages = dispatch.enqueue(app, settings, db, intake.batch_id, queue)
    parts = f"; {made} parts for the Batch API" if asked == Via.BATCH_API.value else ""
    click.echo(f"{messages} messages enqueued{parts}", err=True)
    click.echo(intake.batch_id)


@click.command()
@click.option("--concurrency", type=int, default=4, show_default=True, help="Chunks worked on at once")
@click.option("--queues", default=DEFAULT_QUEUE, show_default=True, help="Comma-separated queues to consume")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--chunk-size", type=int, help="Requests per re-published message [env PIPELINE_CHUNK_SIZE]")
@prices_option
@metrics_option
@api_options
@broker_options
@store_options
def worker(concurrency: int, queues: str, loglevel: str, **params: Any) -> None:
    """Run a Celery worker in the foreground: consumes chunks, sends their requests with one engine.

    Hundreds of requests are in flight per process (--max-in-flight), shared by --concurrency chunks.
    SIGTERM drains: in-flight requests finish and are stored, the rest go back to the queue, exit 0.
    Rows left running by a dead worker are re-queued by the others when their lease expires.
    --metrics-port N serves Prometheus metrics at http://127.0.0.1:N/metrics (--metrics-host for another
    address; see docs/architecture.md).
    """
    settings = pop_settings(params)
    settings.require_api_key()
    limit_table(settings)  # a bad limits or prices file stops the worker here, not in every task
    load_prices(settings)
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
