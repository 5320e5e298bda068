"""`pipeline db`: the schema."""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.failures import database_errors
from pipeline.cli.options import pop_settings, store_options
from pipeline.settings import mask_url
from pipeline.store.db import Database


@click.group()
def db() -> None:
    """Database schema (a fresh SQLite database is migrated on first use anyway)."""


@db.command()
@store_options
def upgrade(**params: Any) -> None:
    """Migrate the database to the newest schema."""
    settings = pop_settings(params)
    with database_errors(settings.db_url):
        Database(settings.db_url).upgrade()
    click.echo(f"database {mask_url(settings.db_url)} is at the newest schema", err=True)


COMMANDS = [db]
