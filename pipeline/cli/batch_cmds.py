"""Commands that look at stored batches: status, export."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, BinaryIO

import click
import orjson

from pipeline import store
from pipeline.cli.options import database, pop_settings, store_options
from pipeline.cli.render import batch_report, print_report
from pipeline.export import FORMATS, export_batch


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
@store_options
def status(batch_id: str | None, as_json: bool, **params: Any) -> None:
    """Counts by status, tokens, 429s and elapsed time of BATCH (default: the latest).

    Reads only the database, so it works while workers run. With --json the keys include total, queued,
    running, succeeded, failed, cancelled, state, pause_reason, tokens, attempts, rate_limited, errors.
    """
    db = database(pop_settings(params))
    report = batch_report(db, store.get_batch(db, batch_id))
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
    db = database(pop_settings(params))
    batch = store.get_batch(db, batch_id)
    with ExitStack() as stack:
        out: BinaryIO = sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
        n = export_batch(db, batch.id, fmt, out)
        out.flush()
    click.echo(
        f"exported {n} requests of batch {batch.id} as {fmt}" + ("" if output == "-" else f" to {output}"),
        err=True,
    )


COMMANDS = [status, export]
