"""The Alembic revisions build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pipeline.db import Database
from pipeline.models import Base
from tests.conftest import invoke


def test_upgrade_head_on_an_empty_database_matches_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.upgrade()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_db_upgrade_command_and_migration_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = invoke("db", "upgrade", "--database-url", url)
    assert result.exit_code == 0
    assert "newest schema" in result.stderr
    assert Database(url).has_schema()
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = invoke("status", "--database-url", fresh)
    assert result.exit_code == 1 and "no batches yet" in result.stderr
    assert Database(fresh).has_schema()
