"""Commands that look at stored batches: status (once, or --watch), batches, errors.

`status` reads through store/overview.py (SQLAlchemy Core) and loads no ORM, and `status --json` no rich
either: they start in 1.3-1.5x the time of `import sqlalchemy, click` (bench/bench_startup.py). `batches`
and `errors` load the store's models when they run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import orjson

from pipeline.cli.options import FiniteFloat, database, pop_settings, prices_option, store_options
from pipeline.prices import load_prices
from pipeline.report import batch_report, batch_row
from pipeline.store import overview
from pipeline.store.states import BatchState


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object on stdout (one per refresh with --watch)"
)
@click.option("--watch", is_flag=True, help="Refresh until the batch is completed or cancelled")
@click.option(
    "--interval",
    type=FiniteFloat(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes",
)
@prices_option
@store_options
def status(batch_id: str | None, as_json: bool, watch: bool, interval: float, **params: Any) -> None:
    """Counts by status, requests in flight, cost, tokens, 429s, failures and limits of BATCH (default: the
    latest).

    Reads only the database, so it works while workers run. --json prints the contract documented in the
    README: the counts (total, queued, running, succeeded, failed, cancelled), in_flight, state,
    pause_reason, finished_at, cost_usd, max_cost_usd, unpriced_models, tokens, attempts, rate_limited,
    errors, failures, limits and more.
    """
    settings = pop_settings(params)
    db = database(settings, create=False)
    prices = load_prices(settings)
    batch = overview.find_batch(db, batch_id)
    if not watch:
        _show(batch_report(db, batch, prices), as_json)
        return
    if as_json or not sys.stdout.isatty():
        while True:
            batch = overview.find_batch(db, batch.id)
            _show(batch_report(db, batch, prices), as_json)
            if BatchState(batch.state).final:
                return
            time.sleep(interval)
    from rich.console import Console
    from rich.live import Live

    from pipeline.cli.render import report_view

    with Live(console=Console(highlight=False), auto_refresh=False) as live:
        while True:
            batch = overview.find_batch(db, batch.id)
            live.update(report_view(batch_report(db, batch, prices)), refresh=True)
            if BatchState(batch.state).final:
                return
            time.sleep(interval)


def _show(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(report).decode())
        return
    from pipeline.cli.render import print_report  # rich loads for the terminal's view only

    print_report(report)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout")
@click.option("--limit", type=int, default=50, show_default=True)
@store_options
def batches(as_json: bool, limit: int, **params: Any) -> None:
    """List the newest batches with their state, counts by status (ids in full), priority and, while they
    send, their share of their key's recent requests."""
    from pipeline.cli.render import print_batches
    from pipeline.store import batches as batch_store

    db = database(pop_settings(params), create=False)
    rows = batch_store.list_batches(db, limit)
    shares = overview.shares(db, [b.id for b, c in rows if c["queued"] + c["running"]])
    if as_json:
        for batch, counts in rows:
            share = shares.get(batch.id, {}).get("share")
            click.echo(orjson.dumps({**batch_row(batch, counts), "priority": batch.priority, "share": share}))
        return
    print_batches(rows, shares)


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per failed request on stdout")
@store_options
def errors(batch_id: str | None, as_json: bool, **params: Any) -> None:
    """Every failed request of BATCH (default: the latest), streamed: custom_id, error type, HTTP status,
    attempts and message (tab-separated, or JSON lines with --json)."""
    from pipeline.store import batches as batch_store

    db = database(pop_settings(params), create=False)
    batch = batch_store.get_batch(db, batch_id)
    count = 0
    out = sys.stdout
    if not as_json:
        out.write("custom_id\terror_type\thttp_status\tattempts\tmessage\n")
    for custom_id, etype, http_status, message, attempts in batch_store.failed_rows(db, batch.id):
        if as_json:
            record = {
                "custom_id": custom_id,
                "error_type": etype,
                "http_status": http_status,
                "attempts": attempts,
                "message": message,
            }
            out.write(orjson.dumps(record).decode() + "\n")
        else:
            cells = (custom_id, etype or "", "" if http_status is None else str(http_status), str(attempts))
            text = " ".join((message or "").split())  # one line per request, whatever the message holds
            out.write("\t".join((*cells, text)) + "\n")
        count += 1
    out.flush()
    click.echo(f"{count:,} failed requests in batch {batch.id}", err=True)


COMMANDS = [status, batches, errors]
