"""Commands that look at stored batches: status, export."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import orjson

from pipeline.cli.options import api_options, broker_options, database, pop_settings, store_options
from pipeline.cli.render import batch_report, print_batches, print_report
from pipeline.cli.sending import send
from pipeline.errors import PathError
from pipeline.export import FORMATS, export_batch
from pipeline.store import batch_rates
from pipeline.store import batches as batch_store
from pipeline.store.db import Database
from pipeline.store.models import RequestStatus


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
@store_options
def status(batch_id: str | None, as_json: bool, **params: Any) -> None:
    """Counts by status, tokens, 429s and elapsed time of BATCH (default: the latest).

    Reads only the database, so it works while workers run. With --json the keys include total, queued,
    running, succeeded, failed, cancelled, state, pause_reason, tokens, attempts, rate_limited, errors,
    priority, and share: while the batch sends, the fraction of its key's recent requests that are its own.
    """
    db = database(pop_settings(params), create=False)
    report = batch_report(db, batch_store.get_batch(db, batch_id))
    if as_json:
        click.echo(orjson.dumps(report).decode())
    else:
        print_report(report)


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("-o", "--output", default="-", metavar="PATH", help="File to write, or - for stdout")
@store_options
def export(batch_id: str | None, fmt: str, output: str, **params: Any) -> None:
    """Write every request of BATCH (default: the latest) with its answer, streamed in constant memory.

    \b
    csv     one row per request: custom_id, endpoint, model, status, http_status, finish_reason,
            prompt/completion/total_tokens, output, error_type, error_message, attempts, latency_ms
    jsonl   one object per request: body, full response, usage, finish reasons, error
    openai  OpenAI Batch API output lines (final requests only), for tools written for the Batch API
    """
    db = database(pop_settings(params), create=False)
    batch = batch_store.get_batch(db, batch_id)
    if output == "-":
        n = export_batch(db, batch.id, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        n = _export_to_file(db, batch.id, fmt, output)
    click.echo(
        f"exported {n} requests of batch {batch.id} as {fmt}" + ("" if output == "-" else f" to {output}"),
        err=True,
    )


def _export_to_file(db: Database, batch_id: str, fmt: str, path: str) -> int:
    try:
        with open(path, "wb") as out:
            return export_batch(db, batch_id, fmt, out)
    except OSError as exc:  # a directory, a missing directory, no permission, a full disk
        raise PathError(f"cannot write {path}: {exc.strerror or exc}") from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout")
@click.option("--limit", type=int, default=50, show_default=True)
@store_options
def batches(as_json: bool, limit: int, **params: Any) -> None:
    """List the newest batches with their counts by status, priority and, while they send, their share of
    their key's recent requests."""
    db = database(pop_settings(params), create=False)
    rows = batch_store.list_batches(db, limit)
    shares = batch_rates.shares(db, [b.id for b, c in rows if c["queued"] + c["running"]])
    if as_json:
        for batch, counts in rows:
            share = shares.get(batch.id, {}).get("share")
            fields = {"batch": batch.id, "source": batch.source, "state": batch.state, **counts}
            click.echo(orjson.dumps({**fields, "priority": batch.priority, "share": share}))
        return
    print_batches(rows, shares)


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.option(
    "--wait", type=float, default=60.0, show_default=True, help="Seconds to wait for in-flight requests"
)
@store_options
def cancel(batch_id: str, wait: float, **params: Any) -> None:
    """Cancel BATCH: queued requests become cancelled and are never sent; in-flight ones finish.

    Waits (up to --wait seconds) until no request of the batch is in flight, so that when it returns the
    API receives nothing more for this batch.
    """
    db = database(pop_settings(params), create=False)
    batch = batch_store.get_batch(db, batch_id)
    cancelled = batch_store.cancel_batch(db, batch.id)
    click.echo(f"batch {batch.id}: {cancelled} queued requests cancelled", err=True)
    deadline = time.monotonic() + wait
    while (running := batch_store.running_count(db, batch.id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if running:
        click.echo(f"{running} requests still in flight after {wait:g}s; they will finish", err=True)
    click.echo(batch.id)


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["failed", "cancelled"]),
    default=["failed"],
    show_default=True,
    help="Which final requests to send again (repeatable)",
)
@api_options
@broker_options
@store_options
def retry(batch_id: str, statuses: tuple[str, ...], **params: Any) -> None:
    """Send the failed requests of BATCH again (--status to choose); succeeded ones are never re-sent.

    A batch made by `pipeline run` runs them here; a submitted batch is enqueued for the workers.
    """
    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    count = batch_store.requeue_final(db, batch.id, [RequestStatus(s) for s in statuses])
    click.echo(f"batch {batch.id}: {count} requests queued again", err=True)
    sys.exit(send(settings, db, batch.id))


@click.command()
@click.argument("batch_id", metavar="BATCH")
@api_options
@broker_options
@store_options
def resume(batch_id: str, **params: Any) -> None:
    """Continue a paused BATCH (for example after the account's quota was restored)."""
    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    batch_store.requeue_final(db, batch.id, [])
    click.echo(f"batch {batch.id} resumed", err=True)
    sys.exit(send(settings, db, batch.id))


COMMANDS = [status, export, batches, cancel, retry, resume]
