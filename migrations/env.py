"""Alembic environment: the models' metadata, SQLite in batch mode (it cannot ALTER most things)."""

from alembic import context
from sqlalchemy import create_engine, pool

from pipeline.settings import Settings
from pipeline.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.load().db_url
target_metadata = Base.metadata


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
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
