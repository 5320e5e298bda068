"""`pipeline run`: validate, store and execute a job file in this process."""

from __future__ import annotations

import sys
from typing import Any

import click

from pipeline.cli.options import (
    api_options,
    database,
    max_cost_option,
    metrics_option,
    pop_settings,
    prices_option,
    store_options,
)
from pipeline.cli.progress import Ticker
from pipeline.cli.sending import report_intake, run_here
from pipeline.endpoints import ENDPOINTS
from pipeline.errors import DuplicateBatch
from pipeline.jobs.intake import Intake, store_job_file
from pipeline.prices import load_prices
from pipeline.ratelimit import limit_table
from pipeline.settings import Settings
from pipeline.store import batches as batch_store
from pipeline.store.db import Database

endpoint_option = click.option(
    "--endpoint",
    type=click.Choice(sorted(ENDPOINTS)),
    help="Lines are bare request bodies for this endpoint (custom ids become line-<n>)",
)
skip_invalid_option = click.option(
    "--skip-invalid", is_flag=True, help="Store and run the valid lines; record invalid ones as failed"
)
force_option = click.option(
    "--force", is_flag=True, help="Make a new batch even if this file was submitted before"
)
reuse_option = click.option(
    "--reuse",
    is_flag=True,
    help="Answer requests identical to ones already answered (any batch) from the store: not sent, no cost",
)


def store_from_params(db: Database, settings: Settings, params: dict[str, Any]) -> Intake:
    """Store the job file named by FILE/--endpoint/--skip-invalid/--force/--reuse/--max-cost, with progress
    on a long file."""
    ticker = Ticker("lines read", None, settings.progress_seconds)
    intake = store_job_file(
        db,
        settings,
        params["job_file"],
        endpoint=params["endpoint"],
        skip_invalid=params["skip_invalid"],
        force=params["force"],
        reuse=params["reuse"],
        max_cost_usd=params["max_cost"],
        on_progress=ticker.update,
    )
    ticker.done(intake.total)
    return intake


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@force_option
@reuse_option
@max_cost_option
@prices_option
@metrics_option
@api_options
@store_options
def run(**params: Any) -> None:
    """Validate FILE, store it as a batch, send every request in this process, store every answer.

    Runs until every request is final. The summary goes to stderr; the batch id is the last line of stdout.
    Running the same file again continues its batch (only unfinished requests are sent) unless --force.
    Progress goes to stderr: a live line on a terminal, a plain line every PIPELINE_PROGRESS_SECONDS (10)
    otherwise. Exit 0 when all succeeded, 3 when some failed or were cancelled, 5 when the batch paused
    (e.g. its --max-cost was reached: `pipeline resume BATCH --max-cost USD` continues).
    """
    settings = pop_settings(params)
    settings.require_api_key()
    limit_table(settings)  # a bad limits or prices file is reported before anything is stored
    load_prices(settings.prices_file)
    db = database(settings)
    try:
        intake = store_from_params(db, settings, params)
        batch_id = intake.batch_id
        report_intake(settings, db, intake, "stored")
    except DuplicateBatch as dup:
        batch_id = dup.batch_id
        click.echo(f"{dup}; continuing it (use --force for a new batch)", err=True)
        if params["max_cost"] is not None:
            batch_store.set_max_cost(db, batch_id, params["max_cost"])
    sys.exit(run_here(settings, db, batch_id))


COMMANDS = [run]
