"""Commands that act on stored batches: export, cancel, retry, resume."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from pipeline import dispatch
from pipeline.cli.options import (
    FiniteFloat,
    api_options,
    broker_options,
    database,
    max_cost_option,
    pop_settings,
    prices_option,
    store_options,
)
from pipeline.cli.progress import Ticker
from pipeline.cli.sending import send
from pipeline.errors import PathError
from pipeline.export import FORMATS, export_batch
from pipeline.settings import Settings
from pipeline.store import batches as batch_store
from pipeline.store import parts
from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, Batch, RequestStatus, Via


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("-o", "--output", default="-", metavar="PATH", help="File to write, or - for stdout")
@store_options
def export(batch_id: str | None, fmt: str, output: str, **params: Any) -> None:
    """Write every request of BATCH (default: the latest) with its answer, streamed in constant memory.

    \b
    csv     one row per request: custom_id, endpoint, model, status, http_status, finish_reason,
            prompt/completion/total_tokens, output, error_type, error_message, attempts, latency_ms,
            reasoning_tokens, flagged (moderations), dimensions (embeddings; vectors: jsonl, openai)
    jsonl   one object per request: body, full response, usage, finish reasons, error; embeddings'
            vectors as lists of floats, a moderation's flagged
    openai  OpenAI Batch API output lines (final requests only), for tools written for the Batch API
    """
    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    ticker = Ticker("rows exported", batch.total, settings.progress_seconds)
    if output == "-":
        n = export_batch(db, batch.id, fmt, sys.stdout.buffer, ticker.update)
        sys.stdout.buffer.flush()
    else:
        n = _export_to_file(db, batch.id, fmt, output, ticker)
    ticker.done(n)
    click.echo(
        f"exported {n} requests of batch {batch.id} as {fmt}" + ("" if output == "-" else f" to {output}"),
        err=True,
    )


def _export_to_file(db: Database, batch_id: str, fmt: str, path: str, ticker: Ticker) -> int:
    try:
        with open(path, "wb") as out:
            return export_batch(db, batch_id, fmt, out, ticker.update)
    except OSError as exc:  # a directory, a missing directory, no permission, a full disk
        raise PathError(f"cannot write {path}: {exc.strerror or exc}") from None


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.option(
    "--wait",
    type=FiniteFloat(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for in-flight requests",
)
@api_options
@store_options
def cancel(batch_id: str, wait: float, **params: Any) -> None:
    """Cancel BATCH: queued requests become cancelled and are never sent; in-flight ones finish.

    Waits (up to --wait seconds) until no request of the batch is in flight, so that when it returns the
    API receives nothing more for this batch. A batch sent through the Batch API has its remote batches
    cancelled too (needs the API key); what they answered before is stored, the rest is cancelled, when
    `pipeline run` or the workers next poll them.
    """
    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    before = batch_store.status_counts(db, batch.id)
    queued = batch_store.cancel_batch(db, batch.id)
    if batch.via == Via.BATCH_API:
        _cancel_parts(settings, db, batch)
    deadline = time.monotonic() + wait
    direct_only = batch.via == Via.BATCH_API  # rows held by parts end when their remote batch does
    while (running := batch_store.running_count(db, batch.id, direct_only=direct_only)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    after = batch_store.status_counts(db, batch.id)
    cancelled = after["cancelled"] - before["cancelled"]
    finished = {k: after[k] - before[k] for k in ("succeeded", "failed")}
    click.echo(
        f"batch {batch.id}: {cancelled:,} requests cancelled ({queued:,} queued, "
        f"{max(0, cancelled - queued):,} held unsent by engines); of those in flight, "
        f"{finished['succeeded']:,} succeeded and {finished['failed']:,} failed since",
        err=True,
    )
    if running:
        click.echo(
            f"{running:,} requests still held after {wait:g}s: in flight ones finish, the rest are cancelled"
            f" (state: {batch_store.get_batch(db, batch.id).state})",
            err=True,
        )
    else:
        click.echo(f"state: {batch_store.get_batch(db, batch.id).state}", err=True)
    click.echo(batch.id)


def _cancel_parts(settings: Settings, db: Database, batch: Batch) -> None:
    remote = parts.remote_batches_to_cancel(db, batch.id)
    if remote and settings.api_key is None:
        click.echo(
            f"{len(remote)} Batch API batches are cancelled when `pipeline run` or the workers next poll "
            f"them (set {settings.api_key_env} to cancel them now)",
            err=True,
        )
    elif remote:
        accepted = dispatch.cancel_remote(settings, batch, remote)
        click.echo(f"{accepted} of {len(remote)} Batch API batches asked to cancel", err=True)
    held = parts.open_count(db, batch.id)
    if held:
        click.echo(
            f"{held} parts are finishing: their rows end when `pipeline run` or the workers poll them",
            err=True,
        )


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
@prices_option
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
@max_cost_option
@prices_option
@api_options
@broker_options
@store_options
def resume(batch_id: str, max_cost: float | None, **params: Any) -> None:
    """Continue a paused BATCH (after the quota was restored, the key fixed, or with a higher --max-cost).

    Takes the API key from the environment and the --base-url given now. A cancelled batch is not resumed:
    `pipeline retry BATCH --status cancelled` sends its cancelled requests.
    """
    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    if batch.state in CANCELLED_STATES:
        raise click.ClickException(
            f"batch {batch.id} was cancelled; to send its cancelled requests: "
            f"pipeline retry {batch.id} --status cancelled"
        )
    if max_cost is not None:
        batch_store.set_max_cost(db, batch.id, max_cost)
    batch_store.requeue_final(db, batch.id, [])
    cap = f" with a spend cap of ${max_cost:,.4f}" if max_cost is not None else ""
    click.echo(f"batch {batch.id} resumed{cap}", err=True)
    sys.exit(send(settings, db, batch.id))


COMMANDS = [export, cancel, retry, resume]
