"""`pipeline prices`: the price table in force, and refreshing it from a maintained source."""

from __future__ import annotations

from typing import Any

import click
import orjson

from pipeline.cli.options import pop_settings, prices_option, store_options
from pipeline.price_sources import update as update_prices
from pipeline.prices import load_prices, refreshed_path, shipped


@click.group()
def prices() -> None:
    """The price table cost is computed with: shipped in the package (dated), refreshed into the data
    directory by `pipeline prices update`, and --prices FILE over both."""


@prices.command("update")
@click.option(
    "--from",
    "source",
    metavar="URL|FILE",
    help="A price file (prices.json's shape, or genai-prices' data.json) to take instead of the installed "
    "genai-prices package",
)
@store_options
def update(source: str | None, **params: Any) -> None:
    """Write a current price table, dated, into the data directory, where every command takes it over the
    shipped one. From the installed genai-prices (pip install 'pipeline-bulk[prices]'; upgrade it for
    newer prices), or --from a URL or file. Workers on other machines read their own data directory: run
    it there too, or give them the file with --prices / PIPELINE_PRICES_FILE."""
    settings = pop_settings(params)
    table = update_prices(settings.data_dir, source)
    path = refreshed_path(settings.data_dir)
    click.echo(f"{len(table['models'])} model prices as of {table['as_of']} from {table['source']}", err=True)
    click.echo(str(path))


@prices.command("show")
@click.argument("models", metavar="[MODEL]...", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
@prices_option
@store_options
def show(models: tuple[str, ...], as_json: bool, **params: Any) -> None:
    """The table in force (its date, source and layer), and the price of each MODEL (default: every one)."""
    table = load_prices(pop_settings(params))
    names = list(models) or sorted(table.models)
    found = {name: table.price(name) for name in names}
    if as_json:
        priced = {
            n: {k: v for k, v in vars_of(p).items() if v is not None} if p else None for n, p in found.items()
        }
        document = {"as_of": table.as_of, "source": table.source, "origin": table.origin, "models": priced}
        click.echo(orjson.dumps(document).decode())
        return
    click.echo(f"prices as of {table.as_of} ({table.origin} table): {table.source}", err=True)
    if table.origin != "shipped":
        click.echo(f"shipped table (offline fallback): as of {shipped().as_of}", err=True)
    for name, price in found.items():
        if price is None:
            click.echo(f"{name}\tno price (add it with --prices FILE)")
        elif price.per_minute is not None:
            click.echo(f"{name}\t${price.per_minute:g} per minute of audio")
        else:
            cached = "" if price.cached_input is None else f", cached input ${price.cached_input:g}"
            click.echo(f"{name}\tinput ${price.input:g}{cached}, output ${price.output:g} per 1M tokens")


def vars_of(price: Any) -> dict[str, Any]:
    return {name: getattr(price, name) for name in ("input", "cached_input", "output", "per_minute")}


COMMANDS = [prices]
