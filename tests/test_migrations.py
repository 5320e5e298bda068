"""The Alembic revisions build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pipeline.store.db import Database, open_database
from pipeline.store.models import Base
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
    fresh = tmp_path / "fresh.db"
    result = invoke("status", "--database-url", f"sqlite:///{fresh}")
    assert result.exit_code == 1 and "no batches yet" in result.stderr
    assert not fresh.exists()  # a reading command never creates a database
    assert open_database(f"sqlite:///{fresh}").has_schema()  # the first that writes migrates it


def test_upgrading_an_old_schema_keeps_its_rows(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    from pipeline.store.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, created_at, source, content_hash, state, base_url, key_fingerprint,"
                " total, options) VALUES ('b1', '2026-01-01', 'old.jsonl', 'h', 'active', 'u', 'k', 1, '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO requests (batch_id, line, custom_id, url, body, status, attempts, created_at)"
                " VALUES ('b1', 1, 'c1', '/v1/chat/completions', '{}', 'queued', 0, '2026-01-01')"
            )
        )
    db.ensure_schema()
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT custom_id, status, enqueued_at FROM requests")).one()
        dispatch = conn.execute(text("SELECT dispatch FROM batches")).scalar_one()
    assert tuple(row) == ("c1", "queued", None)
    assert dispatch == "local"
