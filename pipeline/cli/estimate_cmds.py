"""`pipeline estimate FILE`: requests, prompt tokens, cost and time of a job file, before anything is sent."""

from __future__ import annotations

from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from pipeline.cli.options import api_options, database, pop_settings, prices_option, store_options
from pipeline.cli.run_cmds import audio_root_option, endpoint_option, skip_invalid_option
from pipeline.errors import BatchNotFound
from pipeline.estimate import Estimate, estimate_file
from pipeline.prices import load_prices
from pipeline.store.db import open_database


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
@audio_root_option
@prices_option
@api_options
@store_options
def estimate(job_file: str, endpoint: str | None, skip_invalid: bool, as_json: bool, **params: Any) -> None:
    """Estimate FILE before sending it: requests, prompt tokens (counted offline), cost (low and high) and
    time at the limits given (--rpm, --tpm, --limits-file) or last learned. Stores and sends nothing.

    The low cost assumes answers as long as this store's past answers of each model (the prompt alone when
    none is stored yet); the high one answers of max_tokens (or, without it, 4x the average length).
    """
    settings = pop_settings(params)
    prices = load_prices(settings.prices_file)
    try:
        db = database(settings, create=False)
    except BatchNotFound:  # no store yet: nothing learned; an empty one in memory, never a file
        db = open_database("sqlite://")
    result = estimate_file(db, settings, job_file, prices, endpoint=endpoint, skip_invalid=skip_invalid)
    if as_json:
        click.echo(orjson.dumps(result.as_json()).decode())
    else:
        _print(result)


def _print(result: Estimate) -> None:
    data = result.as_json()
    table = Table(show_header=True, header_style="bold")
    for name in ("model", "requests", "prompt tokens", "completion tokens", "cost (USD)", "limits"):
        table.add_column(name, justify="left" if name in ("model", "limits") else "right")
    for m in result.models:
        completion = f"{m.completion_low:,}-{m.completion_high:,}"
        if m.audio_seconds or m.audio_unknown:
            completion = f"{m.audio_seconds / 60:,.1f} min audio" + (
                f" (+{m.audio_unknown} of unknown length)" if m.audio_unknown else ""
            )
        cost = "no price" if m.cost_low is None else f"{m.cost_low:,.4f}-{m.cost_high or 0:,.4f}"
        limits = f"rpm {m.rpm or '?'}, tpm {m.tpm or '?'}"
        table.add_row(m.model, f"{m.requests:,}", f"{m.prompt_tokens:,}", completion, cost, limits)
    console = Console(highlight=False)
    console.print(
        f"{result.file}: {result.requests:,} requests"
        + (f", {result.invalid} invalid lines" if result.invalid else "")
    )
    console.print(table)
    cost = data["cost_usd"]
    line = f"expected cost ${cost['low']:,.4f} to ${cost['high']:,.4f}"
    if data["unbounded_requests"]:
        line += f" ({data['unbounded_requests']:,} requests without max_tokens: their high is a guess)"
    if data["unpriced_models"]:
        line += f"; no price for {', '.join(data['unpriced_models'])} (add it with --prices)"
    console.print(line + f"   [prices as of {data['prices_as_of']}]")
    seconds = data["seconds"]
    console.print(
        f"time at the limits in force: {_duration(seconds)}"
        if seconds is not None
        else "time: unknown (no limits given with --rpm/--tpm and none learned yet for every model)"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


COMMANDS = [estimate]
