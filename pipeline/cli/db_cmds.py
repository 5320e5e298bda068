"""`pipeline db`: the schema."""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.failures import database_errors
from pipeline.cli.options import pop_settings, store_options
from pipeline.settings import mask_url
from pipeline.store.db import Database, sqlite_path


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


@db.command()
@store_options
def path(**params: Any) -> None:
    """Print the database in use (a SQLite file's path, or the URL with its password masked).

    \b
    Where the data lives, first found wins:
      --data-dir / --database-url, then PIPELINE_DATA_DIR / PIPELINE_DATABASE_URL,
      then a .pipeline/ folder in the working directory or a parent (as git finds .git),
      then the user data directory (e.g. ~/.local/share/pipeline).
    """
    settings = pop_settings(params)
    file = sqlite_path(settings.db_url)
    click.echo(str(file.resolve()) if file is not None else mask_url(settings.db_url))
    if settings.database_url is None:
        exists = "" if file is None or file.exists() else "; no database there yet"
        click.echo(f"data directory {settings.data_dir} (from {settings.data_dir_source}){exists}", err=True)


COMMANDS = [db]
