"""`pipeline priority`: a batch's weight in the fair share of workers and rate limits; and its --priority."""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.options import database, pop_settings, store_options
from pipeline.store import batches as batch_store
from pipeline.store import fair
from pipeline.store.db import Database

#: `run` and `submit` take it; without it a new batch gets priority 1 and a continued one keeps its own.
priority_option = click.option(
    "--priority",
    type=click.IntRange(1, fair.MAX_PRIORITY),
    help="Weight in the fair share of the key's rate limit and of the workers: a batch at 3 gets three "
    "times the share of one at 1 while both run [default 1; change later with `pipeline priority`]",
)


def apply_priority(db: Database, batch_id: str, priority: int | None) -> None:
    """Set the batch's priority when --priority was given."""
    if priority is not None:
        fair.set_priority(db, batch_id, priority)


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.argument("priority", metavar="N", type=click.IntRange(1, fair.MAX_PRIORITY))
@store_options
def priority(batch_id: str, priority: int, **params: Any) -> None:
    """Set BATCH's priority to N, also while it runs.

    Batches running at the same time on one API key share its rate limit (and the workers) in proportion to
    their priorities: at 3 against 1, a batch gets three quarters of the budget while both want more than
    their share; alone, any batch gets all of it. Claims follow at once, engines within a second.
    `pipeline status` shows each running batch's share.
    """
    db = database(pop_settings(params), create=False)
    batch = batch_store.get_batch(db, batch_id)
    fair.set_priority(db, batch.id, priority)
    click.echo(f"batch {batch.id}: priority {batch.priority} -> {priority}", err=True)
    click.echo(batch.id)


COMMANDS = [priority]
