"""`pipeline run`: validate, store and execute a job file in this process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline.accounts import pool_from_settings
from pipeline.batchapi.options import BatchApiOptions, OnExpire
from pipeline.cli.options import (
    api_options,
    database,
    max_cost_option,
    metrics_option,
    pop_settings,
    prices_option,
    store_options,
)
from pipeline.cli.priority_cmds import apply_priority, priority_option
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
from pipeline.store.models import Via

F = TypeVar("F", bound=Callable[..., Any])

endpoint_option = click.option(
    "--endpoint",
    type=click.Choice(sorted(ENDPOINTS)),
    help="Lines are bare request bodies for this endpoint (custom ids become line-<n>)",
)


def skip_invalid(help: str) -> Callable[[F], F]:
    """--skip-invalid, with what it does for the command at hand."""
    return click.option("--skip-invalid", is_flag=True, help=help)


skip_invalid_option = skip_invalid(
    "Store and send the valid lines; record the invalid ones as failed (without it: exit 4, nothing stored)"
)
force_option = click.option(
    "--force", is_flag=True, help="Make a new batch even if this file was submitted before"
)
audio_root_option = click.option(
    "--audio-root",
    "audio_roots",
    multiple=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="A folder besides the job file's own that its audio files may lie in (repeatable) "
    "[env PIPELINE_AUDIO_ROOTS, separated by :]",
)
reuse_option = click.option(
    "--reuse",
    is_flag=True,
    help="Answer requests identical to ones already answered (any batch) from the store: not sent, no cost",
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
    """Store the job file named by FILE/--endpoint/--skip-invalid/--force/--via.../--reuse/--max-cost, with
    progress on a long file."""
    via, options = way_from_params(settings, params)
    ticker = Ticker("lines read", None, settings.progress_seconds)
    intake = store_job_file(
        db,
        settings,
        params["job_file"],
        endpoint=params["endpoint"],
        skip_invalid=params["skip_invalid"],
        force=params["force"],
        via=via,
        batch_api=options,
        reuse=params["reuse"],
        max_cost_usd=params["max_cost"],
        on_progress=ticker.update,
    )
    ticker.done(intake.total)
    return intake


def note_way(db: Database, batch_id: str, params: dict[str, Any]) -> None:
    """A file stored before is continued the way it was stored: say so when another way was asked for."""
    stored = batch_store.get_batch(db, batch_id).via
    if params.get("via") not in (None, stored.value):
        click.echo(f"batch {batch_id} was stored with --via {stored.value}; it continues that way", err=True)


@click.command()
@click.argument("job_file", metavar="FILE", type=click.Path(allow_dash=True))
@endpoint_option
@skip_invalid_option
@force_option
@way_options
@reuse_option
@audio_root_option
@max_cost_option
@prices_option
@metrics_option
@priority_option
@api_options
@store_options
def run(**params: Any) -> None:
    """Validate FILE, store it as a batch, send every request in this process, store every answer.

    Runs until every request is final. The summary goes to stderr; the batch id is the last line of stdout.
    Running the same file again continues its batch (only unfinished requests are sent) unless --force.
    Progress goes to stderr: a live line on a terminal, a plain line every PIPELINE_PROGRESS_SECONDS (10)
    otherwise. Exit 0 when all succeeded, 3 when some failed or were cancelled (or are not finished), 5 when
    the batch paused (e.g. its --max-cost was reached: `pipeline resume BATCH --max-cost USD` continues).

    With --via batch-api the requests go to the OpenAI Batch API in parts (one endpoint and model each) and
    this command polls them until they are answered; Ctrl-C stops the waiting, not the remote batches, and
    the same command run again carries on.
    """
    priority = params.pop("priority")
    settings = pop_settings(params)
    pool_from_settings(settings).require_keys()
    limit_table(settings)  # a bad limits or prices file is reported before anything is stored
    load_prices(settings)
    db = database(settings)
    asked = params.get("via")
    try:
        intake = store_from_params(db, settings, params)
        batch_id = intake.batch_id
        report_intake(settings, db, intake, "stored")
    except DuplicateBatch as dup:
        batch_id = dup.batch_id
        click.echo(f"{dup}; continuing it (use --force for a new batch)", err=True)
        note_way(db, batch_id, {"via": asked})
        if params["max_cost"] is not None:
            batch_store.set_max_cost(db, batch_id, params["max_cost"])
    apply_priority(db, batch_id, priority)
    sys.exit(run_here(settings, db, batch_id))


COMMANDS = [run]
