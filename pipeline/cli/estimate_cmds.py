"""`pipeline estimate FILE`: requests, prompt tokens, cost and time of a job file, before anything is sent.

It takes the options that change an estimate and every account or pool option `run` takes (so the same
command line estimates and then runs), but none that only change how requests are sent (--max-in-flight,
--timeout, --max-attempts). The table fits 80 columns with the cost whole.
"""

from __future__ import annotations

from typing import Any

import click
import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.cli.options import (
    account_options,
    database,
    limit_options,
    pop_settings,
    prices_option,
    store_options,
)
from pipeline.cli.render import usd
from pipeline.cli.run_cmds import endpoint_option, skip_invalid
from pipeline.errors import BatchNotFound
from pipeline.estimate import Estimate, estimate_file
from pipeline.prices import load_prices
from pipeline.store.db import open_database
from pipeline.store.models import Via


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid("Estimate the valid lines and count the invalid ones (without it: exit 4 on an invalid line)")
@click.option(
    "--via",
    type=click.Choice([v.value for v in Via]),
    default=Via.DIRECT.value,
    show_default=True,
    help="Price it sent directly, or through the OpenAI Batch API (half price, answers within 24 h)",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
@prices_option
@account_options
@limit_options
@store_options
def estimate(
    job_file: str, endpoint: str | None, skip_invalid: bool, via: str, as_json: bool, **params: Any
) -> None:
    """Estimate FILE before sending it: requests, prompt tokens (counted offline), cost (low and high) and
    time at the limits given (--rpm, --tpm, --limits-file) or last learned for this account (--base-url,
    the key, --organization, --project). Stores and sends nothing.

    The low cost assumes answers as long as this store's past answers of each model (the prompt alone when
    none is stored yet); the high one answers of max_tokens (or, without it, 4x the average length).
    Prompt counts are exact with the [tokens] extra (toktok-rs), else estimates (characters / 4).
    """
    settings = pop_settings(params)
    prices = load_prices(settings)
    try:
        db = database(settings, create=False)
    except BatchNotFound:  # no store yet: nothing learned; an empty one in memory, never a file
        db = open_database("sqlite://")
    result = estimate_file(
        db, settings, job_file, prices, endpoint=endpoint, skip_invalid=skip_invalid, via=Via(via)
    )
    if as_json:
        click.echo(orjson.dumps(result.as_json()).decode())
    else:
        _print(result)


def _print(result: Estimate) -> None:
    data = result.as_json()
    table = Table(show_header=True, header_style="bold", box=box.SIMPLE_HEAD)  # no side borders: room
    costs = [_cost(m.cost_low, m.cost_high) for m in result.models]
    table.add_column("model", overflow="fold")
    table.add_column("requests", justify="right", overflow="fold")
    table.add_column("prompt\ntokens", justify="right", overflow="fold")
    table.add_column("completion\ntokens", justify="right", overflow="fold", min_width=10)
    table.add_column("cost", justify="right", no_wrap=True, min_width=max(map(len, costs), default=4))
    table.add_column("limits", overflow="fold", max_width=10)
    for m, cost in zip(result.models, costs, strict=True):
        completion = f"{m.completion_low:,}-{m.completion_high:,}"
        if m.audio_seconds or m.audio_unknown:
            completion = f"{m.audio_seconds / 60:,.1f} min audio" + (
                f" (+{m.audio_unknown} of unknown length)" if m.audio_unknown else ""
            )
        limits = "Batch API" if result.via == Via.BATCH_API else f"{_short(m.rpm)} rpm, {_short(m.tpm)} tpm"
        table.add_row(m.model, f"{m.requests:,}", f"{m.prompt_tokens:,}", completion, cost, limits)
    console = Console(highlight=False)
    way = " through the Batch API (half price)" if result.via == Via.BATCH_API else ""
    invalid = f", {result.invalid} invalid lines" if result.invalid else ""
    console.print(f"{result.file}: {result.requests:,} requests{invalid}{way}")
    console.print(table)
    cost = data["cost_usd"]
    line = f"expected cost {usd(cost['low'])} to {usd(cost['high'])}"
    if data["unbounded_requests"]:
        line += f" ({data['unbounded_requests']:,} requests without max_tokens: their high is a guess)"
    if data["unpriced_models"]:
        line += f"; no price for {', '.join(data['unpriced_models'])} (add it with --prices)"
    console.print(line + f"   [prices as of {data['prices_as_of']}]")
    if not result.prompt_tokens_exact:
        console.print(
            "prompt tokens are estimates (characters / 4): "
            "pip install 'pipeline-bulk[tokens]' for exact counts"
        )
    seconds = data["seconds"]
    if result.via == Via.BATCH_API:
        console.print("time: the Batch API answers within its 24 h window")
    elif seconds is not None:
        console.print(f"time at the limits in force: {_duration(seconds)}")
    else:
        console.print("time: unknown (no limits given with --rpm/--tpm and none learned yet for every model)")


def _cost(low: float | None, high: float | None) -> str:
    return "no price" if low is None else f"{usd(low)}-{usd(high or 0.0)}"


def _short(count: int | None) -> str:
    """A limit as people read it: 500, 30k, 2M; ? when unknown."""
    if not count:
        return "?"
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


COMMANDS = [estimate]
