"""Alembic environment: the models' metadata, SQLite in batch mode (it cannot ALTER most things)."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from pipeline.settings import Settings
from pipeline.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.load().db_url
target_metadata = Base.metadata

#: PostgreSQL advisory lock key held while migrating ("pipe" in ASCII): workers started together on a new
#: database would otherwise create the same tables and types at once, and all but one fail.
MIGRATION_LOCK = 0x70697065


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = create_engine(url, poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Held to the end of the transaction; the version is read after it is taken, so whoever
                # waited finds the schema at head and does nothing.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
