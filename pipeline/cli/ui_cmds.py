"""Commands to look at batches: `ui` (a local web view) and `report` (one self-contained HTML file)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import database, pop_settings, prices_option, store_options
from pipeline.errors import PathError
from pipeline.prices import load_prices
from pipeline.store import batches as batch_store


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (anything but loopback "
              "needs the token)")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--token", metavar="TEXT", help="The token to require [default: a new one, printed in the URL]")
@click.option("--no-token", is_flag=True, help="Serve without a token (loopback only)")
@click.option("--allow-actions", is_flag=True, help="Enable cancel, retry, resume and priority on the page")
@prices_option
@store_options
def ui(host: str, port: int, token: str | None, no_token: bool, allow_actions: bool, **params: Any) -> None:
    """Serve a local web view of the batches: progress, cost, limits, charts, a row browser; JSON at /api/.

    Read-only unless --allow-actions. Loads nothing from the internet. Stop it with Ctrl-C.

    \b
      pipeline ui                          # http://127.0.0.1:8765/?token=...
      pipeline ui --host 0.0.0.0 --port 9000 --allow-actions
    """
    from aiohttp import web

    from pipeline.ui.security import Guard, is_loopback
    from pipeline.ui.server import make_app

    if no_token and token:
        raise click.UsageError("--token and --no-token contradict each other")
    if no_token and not is_loopback(host):
        raise click.UsageError(f"refusing to serve on {host} without a token: drop --no-token")
    settings = pop_settings(params)
    db = database(settings, create=False)
    prices = load_prices(settings)
    guard = Guard(None if no_token else token or secrets.token_urlsafe(24), allow_actions)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}/"
    click.echo(f"serving {db!r} at {url}" + (f"?token={guard.token}" if guard.token else ""), err=True)
    click.echo(
        "read-write: actions enabled" if allow_actions else "read-only (--allow-actions to act)", err=True
    )
    web.run_app(make_app(db, prices, settings, guard), host=host, port=port, print=None, handle_signals=True)


@click.command()
@click.argument("batch_id", metavar="[BATCH]", required=False)
@click.option("-o", "--output", default="report.html", show_default=True, metavar="PATH")
@prices_option
@store_options
def report(batch_id: str | None, output: str, **params: Any) -> None:
    """Write one self-contained HTML file on BATCH (default: the latest): its summary, charts and failures.

    No server and no network: the page's script, styles and the batch's data are inside the file.
    """
    from pipeline.ui.report import write_report

    settings = pop_settings(params)
    db = database(settings, create=False)
    batch = batch_store.get_batch(db, batch_id)
    try:
        size = write_report(db, batch, load_prices(settings), Path(output))
    except OSError as exc:
        raise PathError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"report on batch {batch.id} written to {output} ({size:,} bytes)", err=True)


COMMANDS = [ui, report]
