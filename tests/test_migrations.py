"""The Alembic revisions build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pipeline.store.db import Database, alembic_config, head_revision, open_database
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


def test_0008_splits_active_batches_and_counts_their_usage(database_url: str) -> None:
    """On SQLite and PostgreSQL: active batches become in_progress or completed, usage is counted."""
    from alembic import command
    from sqlalchemy import text

    from pipeline.store.db import alembic_config

    url = database_url
    command.upgrade(alembic_config(url), "0007")
    db = Database(url)
    batch = (
        "INSERT INTO batches (id, created_at, source, content_hash, state, base_url, key_fingerprint, total,"
        " options, dispatch) VALUES (:id, '2026-01-01', 'x.jsonl', :id, :state, 'u', 'k', 2, '{}', 'local')"
    )
    request = (
        "INSERT INTO requests (id, batch_id, line, custom_id, url, body, status, attempts, created_at,"
        " finished_at, fence) VALUES (:rid, :b, 1, :c, '/v1/chat/completions', '{}', :status, 1,"
        " '2026-01-01', :done, 0)"
    )
    with db.engine.begin() as conn:
        for bid, state in (
            ("done", "active"),
            ("open", "active"),
            ("stop", "cancelled"),
            ("gone", "cancelled"),
        ):
            conn.execute(text(batch), {"id": bid, "state": state})
        rows = [
            (1, "done", "succeeded", "2026-01-02 10:00:00"),
            (2, "done", "failed", "2026-01-02 11:00:00"),
            (3, "open", "succeeded", "2026-01-02 10:00:00"),
            (4, "open", "queued", None),
            (5, "stop", "running", None),
            (6, "gone", "cancelled", "2026-01-03 09:00:00"),
        ]
        for rid, bid, status, done in rows:
            conn.execute(
                text(request), {"rid": rid, "b": bid, "c": f"c{rid}", "status": status, "done": done}
            )
        conn.execute(
            text(
                "INSERT INTO results (request_id, http_status, body, model)"
                " VALUES (1, 200, '{}', 'gpt-4o-mini')"
            )
        )
        for rid, status, prompt in ((1, 200, 10), (2, 429, None), (2, 400, None)):
            conn.execute(
                text(
                    "INSERT INTO attempts (request_id, number, started_at, latency_ms, http_status,"
                    " prompt_tokens, completion_tokens, total_tokens)"
                    " VALUES (:r, 1, '2026-01-02', 5, :s, :p, :p, :p)"
                ),
                {"r": rid, "s": status, "p": prompt},
            )
    db.ensure_schema()
    with db.engine.connect() as conn:
        states = dict(conn.execute(text("SELECT id, state FROM batches")).all())
        finished = dict(conn.execute(text("SELECT id, finished_at FROM batches")).all())
        usage = conn.execute(
            text(
                "SELECT batch_id, model, attempts, charged, rate_limited, prompt_tokens FROM batch_usage"
                " ORDER BY batch_id, model"
            )
        ).all()
        failures = conn.execute(
            text("SELECT batch_id, error_type, http_status, count FROM batch_failures")
        ).all()
    db.engine.dispose()
    assert [tuple(f) for f in failures] == [("done", "unknown", 0, 1)]
    assert states == {"done": "completed", "open": "in_progress", "stop": "cancelling", "gone": "cancelled"}
    assert str(finished["done"]).startswith("2026-01-02 11:00:00") and finished["open"] is None
    assert str(finished["gone"]).startswith("2026-01-03 09:00:00")
    assert [tuple(u) for u in usage] == [
        ("done", "gpt-4o-mini", 1, 1, 0, 10),
        ("done", "unknown", 2, 0, 1, 0),
    ]


def test_the_highest_numbered_revision_file_is_alembics_head() -> None:
    """`ensure_schema` finds the head without Alembic: each revision is named after its file's number."""
    from alembic.script import ScriptDirectory

    from pipeline.store.db import alembic_config, head_revision

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == script.get_current_head()
    for revision in script.walk_revisions():
        assert Path(revision.path).name.startswith(f"{revision.revision}_")


def test_processes_started_together_on_a_new_database_all_migrate_it(database_url: str) -> None:
    """A fleet started at once (docker-compose up, a scheduler) finds a new database: every process migrates
    on first use, one of them does the work, the others wait for it and find the schema at head."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PIPELINE_DATABASE_URL": database_url}
    # `db upgrade` migrates outright; a worker (or run, submit) checks the schema first, as open_database does
    first_use = f"from pipeline.store.db import open_database; open_database({database_url!r})"
    commands = [["-m", "pipeline", "db", "upgrade"], ["-c", first_use]] * 2
    procs = [
        subprocess.Popen(
            [sys.executable, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.engine.dispose()


def _schema(db: Database) -> dict[str, dict[str, object]]:
    """Every table's columns (with types, nullability and server defaults), keys, indexes and constraints."""
    found = inspect(db.engine)
    return {
        table: {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in found.get_columns(table)
            ),
            "pk": found.get_pk_constraint(table),
            "fks": sorted(str(sorted(fk.items())) for fk in found.get_foreign_keys(table)),
            "indexes": sorted(str(sorted(ix.items())) for ix in found.get_indexes(table)),
            "uniques": sorted(str(sorted(u.items())) for u in found.get_unique_constraints(table)),
            "checks": sorted(str(sorted(c.items())) for c in found.get_check_constraints(table)),
        }
        for table in found.get_table_names()
    }


def test_a_new_sqlite_file_gets_the_schema_the_revisions_build(tmp_path: Path) -> None:
    """A new SQLite file is created from the models and stamped at head (no revision run): it must be the
    schema every revision in turn builds, to the server defaults and constraint names later revisions
    may depend on."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext as Context

    migrated = Database(f"sqlite:///{tmp_path / 'migrated.db'}")
    migrated.upgrade()
    created = open_database(f"sqlite:///{tmp_path / 'created.db'}")
    assert _schema(created) == _schema(migrated)
    with created.engine.connect() as conn:
        assert Context.configure(conn).get_current_revision() == head_revision()
    command.upgrade(alembic_config(created.url), "head")  # nothing left to run
    assert _schema(created) == _schema(migrated)
