"""Connecting to the database: SQLite tuned for several writer processes, PostgreSQL as it is, both migrated.

SQLite: WAL (readers never block the writer), a 30 s busy timeout, and `BEGIN IMMEDIATE` for write sessions,
because a deferred transaction that upgrades from read to write fails at once with "database is locked"
instead of waiting.
"""

from __future__ import annotations

import fcntl
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from pipeline.errors import BatchNotFound, ConnectError
from pipeline.settings import mask_url

if TYPE_CHECKING:  # the ORM loads with the first session: `status` reads through Core alone (overview.py)
    from sqlalchemy.orm import Session, sessionmaker

#: Seconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_SECONDS = 60


def migrations_dir() -> Path:
    """The Alembic revisions: `pipeline.migrations` of an installed wheel (the build maps the repository's
    top-level migrations/ there), else the checkout's migrations/."""
    try:
        spec = importlib.util.find_spec("pipeline.migrations")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """One engine per URL and process, migrated on first use, with read and write sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url)

    def __repr__(self) -> str:
        return f"Database({mask_url(self.url)!r})"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions[0]() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction, committed on success."""
        with self._sessions[1].begin() as session:
            yield session

    @cached_property
    def _sessions(self) -> tuple[sessionmaker[Session], sessionmaker[Session]]:
        """(read, write) session makers, made on first use (two threads racing make equal ones)."""
        from sqlalchemy.orm import sessionmaker

        write = self.engine.execution_options(sqlite_immediate=True)
        return sessionmaker(self.engine, expire_on_commit=False), sessionmaker(write, expire_on_commit=False)

    def upgrade(self) -> None:
        """Bring the schema to the newest revision (idempotent; serialised between local processes)."""
        from alembic import command

        with _migration_lock(self):
            command.upgrade(alembic_config(self.url), "head")

    def ensure_schema(self) -> None:
        """Migrate if the schema is not at head. Cheap when it is: one SELECT, and no Alembic import (which
        with parsing every revision cost a short command like `status` about 0.2 s).

        Otherwise it checks again under the migration lock, after whoever holds it is done. On SQLite the
        first check may fail outright: the first connection to a new file switches it to WAL, which needs
        the file to itself and says "database is locked" at once while another process creates the schema.
        """
        try:
            if self._schema_version() == head_revision():
                return
        except ConnectError:
            if not self.is_sqlite:
                raise
        with _migration_lock(self):
            if self._schema_version() != head_revision():
                if self.is_sqlite and not inspect(self.engine).get_table_names():
                    self._create_newest()
                    return
                from alembic import command

                command.upgrade(alembic_config(self.url), "head")

    def _create_newest(self) -> None:
        """A new SQLite file: the newest schema straight from the models, stamped with the head revision, in
        one transaction (tests/test_migrations.py holds it alike to the revisions' schema). Running every
        revision through Alembic cost each first `pipeline run` ~0.35 CPU-s."""
        from pipeline.store.models import Base

        with self.engine.begin() as conn:
            Base.metadata.create_all(conn)
            conn.execute(text(_ALEMBIC_VERSION))
            stamp = text("INSERT INTO alembic_version (version_num) VALUES (:v)")
            conn.execute(stamp, {"v": head_revision()})

    def _schema_version(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except OperationalError as exc:
            if "alembic_version" not in str(exc):  # SQLite says "no such table: alembic_version"
                raise ConnectError(
                    f"cannot reach database {mask_url(self.url)}: {_first_line(exc)}"
                ) from None
            current = None
        except ProgrammingError:  # PostgreSQL: no alembic_version table yet
            current = None
        return current

    def has_schema(self) -> bool:
        return inspect(self.engine).has_table("batches")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


#: Alembic's own table, as Alembic creates it.
_ALEMBIC_VERSION = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
    " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
#: A revision file's `revision = "..."` line.
_REVISION = re.compile(r'^revision(?:: str)? = "([^"]+)"', re.MULTILINE)


@cache
def head_revision() -> str:
    """The newest revision: the one in the highest-numbered file, the head of the (linear) history. Its id
    starts its file's name: the number alone (0007_...py has "0007") or the number and a topic (work done
    beside other work: 0012_accounts_pool.py may have "0012_accounts"), as the file's `revision` says.
    tests/test_migrations.py holds Alembic to it."""
    files = (migrations_dir() / "versions").glob("[0-9]*_*.py")
    newest = max(files, key=lambda p: (p.name.split("_", 1)[0], p.name))
    found = _REVISION.search(newest.read_text())
    return found.group(1) if found else newest.name.split("_", 1)[0]


@cache
def open_database(url: str, *, create: bool = True) -> Database:
    """The process's Database for `url`, schema ensured. With `create` False (commands that only read or
    control existing batches), a SQLite file that does not exist yet raises BatchNotFound instead of
    being created."""
    path = sqlite_path(url)
    if not create and path is not None and not path.exists():
        raise BatchNotFound(f"no batches yet: no database at {path} (run or submit a job file first)")
    db = Database(url)
    if db.is_sqlite and path is None:  # in memory: Alembic's own connection would migrate another one
        from pipeline.store.models import Base

        Base.metadata.create_all(db.engine)
    else:
        db.ensure_schema()
    return db


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        try:
            # A worker holds several connections at once (claims from each chunk thread, the writer, the
            # lease keeper, the state watcher): leave room so none waits on the pool.
            return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except Exception as exc:  # bad driver name, malformed URL
            raise ConnectError(f"cannot use database {mask_url(url)}: {_first_line(exc)}") from None
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # pysqlite's own transaction handling is off (isolation_level=None); we begin explicitly.
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def _migration_lock(db: Database) -> Iterator[None]:
    path = sqlite_path(db.url)
    if path is None:
        yield  # PostgreSQL: migrations/env.py holds an advisory lock for the migration's transaction
        return
    with open(path.with_name(path.name + ".migrate-lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_transient(exc: BaseException) -> bool:
    """An error that trying the same statement again may cure: the database restarting, busy or unreachable,
    the pool out of connections, a disk that was full. Anything else (a value the column refuses, a broken
    constraint) fails the same way every time."""
    if isinstance(exc, OSError | sqlalchemy.exc.TimeoutError | sqlalchemy.exc.DisconnectionError):
        return True
    # The writer's executemany raises the driver's own classes (sqlite3, psycopg), SQLAlchemy wraps the rest:
    # both name them as DB-API 2.0 does.
    return any(cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(exc).__mro__)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a driver's message can run to many lines)."""
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
