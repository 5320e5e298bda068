"""`pipeline run`: validate, store and execute a job file in this process."""

from __future__ import annotations

import sys
from typing import Any

import click

from pipeline.cli.options import api_options, database, pop_settings, store_options
from pipeline.cli.priority_cmds import apply_priority, priority_option
from pipeline.cli.sending import run_here
from pipeline.endpoints import ENDPOINTS
from pipeline.errors import DuplicateBatch
from pipeline.jobs.intake import Intake, store_job_file
from pipeline.ratelimit import limit_table
from pipeline.settings import Settings
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


def store_from_params(db: Database, settings: Settings, params: dict[str, Any]) -> Intake:
    """Store the job file named by the FILE/--endpoint/--skip-invalid/--force parameters."""
    return store_job_file(
        db,
        settings,
        params["job_file"],
        endpoint=params["endpoint"],
        skip_invalid=params["skip_invalid"],
        force=params["force"],
    )


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@force_option
@priority_option
@api_options
@store_options
def run(**params: Any) -> None:
    """Validate FILE, store it as a batch, send every request in this process, store every answer.

    Runs until every request is final. The summary goes to stderr; the batch id is the last line of stdout.
    Running the same file again continues its batch (only unfinished requests are sent) unless --force.
    Exit 0 when all succeeded, 3 when some failed or were cancelled, 5 when the batch paused.
    """
    priority = params.pop("priority")
    settings = pop_settings(params)
    settings.require_api_key()
    limit_table(settings)  # a bad limits file is reported before anything is stored
    db = database(settings)
    try:
        intake = store_from_params(db, settings, params)
        batch_id = intake.batch_id
        click.echo(f"stored {intake.total} requests as batch {batch_id}", err=True)
        if intake.invalid:
            click.echo(f"{intake.invalid} invalid line(s) recorded as failed", err=True)
    except DuplicateBatch as dup:
        batch_id = dup.batch_id
        click.echo(f"{dup}; continuing it (use --force for a new batch)", err=True)
    apply_priority(db, batch_id, priority)
    sys.exit(run_here(settings, db, batch_id))


COMMANDS = [run]
