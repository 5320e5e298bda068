"""`pipeline run`: validate, store and execute a job file in this process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline.batchapi.options import BatchApiOptions, OnExpire
from pipeline.cli.options import api_options, database, pop_settings, store_options
from pipeline.cli.sending import run_here
from pipeline.endpoints import ENDPOINTS
from pipeline.errors import DuplicateBatch
from pipeline.jobs.intake import Intake, store_job_file
from pipeline.ratelimit import limit_table
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import Database
from pipeline.store.models import Via

F = TypeVar("F", bound=Callable[..., Any])

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


def way_options(fn: F) -> F:
    """How the batch is sent: directly, or through the Batch API with its options (run and submit)."""
    for decorator in reversed(
        [
            click.option(
                "--via",
                type=click.Choice([v.value for v in Via]),
                default=Via.DIRECT.value,
                show_default=True,
                help="Send each request directly, or hand the batch to the OpenAI Batch API (half price, "
                "results within 24 h)",
            ),
            click.option(
                "--on-expire",
                type=click.Choice([o.value for o in OnExpire]),
                help="With --via batch-api: requests the Batch API did not get to in 24 h go into a new part "
                "(resubmit, the default), are sent directly (direct), or fail (fail)",
            ),
            click.option(
                "--part-size",
                type=int,
                help="With --via batch-api: requests per part at most [env PIPELINE_PART_SIZE; 50000]",
            ),
            click.option(
                "--part-bytes",
                type=int,
                help="With --via batch-api: bytes of input file per part at most "
                "[env PIPELINE_PART_BYTES; 200000000]",
            ),
            click.option(
                "--audio-direct",
                is_flag=True,
                help="With --via batch-api: send audio lines directly (the Batch API takes no audio; "
                "without this flag they are refused)",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def way_from_params(settings: Settings, params: dict[str, Any]) -> tuple[Via, BatchApiOptions]:
    """The --via flag and the Batch API's options; UsageError for Batch API options given without it."""
    via = Via(params.pop("via"))
    on_expire, audio_direct = params.pop("on_expire"), params.pop("audio_direct")
    if via == Via.DIRECT and (on_expire is not None or audio_direct):
        raise click.UsageError("--on-expire and --audio-direct apply to --via batch-api only")
    options = BatchApiOptions(
        on_expire=OnExpire(on_expire or OnExpire.RESUBMIT),
        part_size=settings.part_size,
        part_bytes=settings.part_bytes,
        audio_direct=audio_direct,
    )
    return via, options


def store_from_params(db: Database, settings: Settings, params: dict[str, Any]) -> Intake:
    """Store the job file named by the FILE/--endpoint/--skip-invalid/--force/--via... parameters."""
    via, options = way_from_params(settings, params)
    return store_job_file(
        db,
        settings,
        params["job_file"],
        endpoint=params["endpoint"],
        skip_invalid=params["skip_invalid"],
        force=params["force"],
        via=via,
        batch_api=options,
    )


def note_way(db: Database, batch_id: str, params: dict[str, Any]) -> None:
    """A file stored before is continued the way it was stored: say so when another way was asked for."""
    stored = batches.get_batch(db, batch_id).via
    if params.get("via") not in (None, stored.value):
        click.echo(f"batch {batch_id} was stored with --via {stored.value}; it continues that way", err=True)


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@force_option
@way_options
@api_options
@store_options
def run(**params: Any) -> None:
    """Validate FILE, store it as a batch, send every request in this process, store every answer.

    Runs until every request is final. The summary goes to stderr; the batch id is the last line of stdout.
    Running the same file again continues its batch (only unfinished requests are sent) unless --force.
    Exit 0 when all succeeded, 3 when some failed or were cancelled (or are not finished), 5 when the batch
    paused.

    With --via batch-api the requests go to the OpenAI Batch API in parts (one endpoint and model each) and
    this command polls them until they are answered; Ctrl-C stops the waiting, not the remote batches, and
    the same command run again carries on.
    """
    settings = pop_settings(params)
    settings.require_api_key()
    limit_table(settings)  # a bad limits file is reported before anything is stored
    db = database(settings)
    asked = params.get("via")
    try:
        intake = store_from_params(db, settings, params)
        batch_id = intake.batch_id
        click.echo(f"stored {intake.total} requests as batch {batch_id}", err=True)
        if intake.invalid:
            click.echo(f"{intake.invalid} invalid line(s) recorded as failed", err=True)
    except DuplicateBatch as dup:
        batch_id = dup.batch_id
        click.echo(f"{dup}; continuing it (use --force for a new batch)", err=True)
        note_way(db, batch_id, {"via": asked})
    sys.exit(run_here(settings, db, batch_id))


COMMANDS = [run]
