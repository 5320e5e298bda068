"""SQL the store's rooms share: column lists derived from the models, one upsert, driver-level executemany.

The hot paths (intake of a million lines, the writer's outcomes) go straight to the driver's `executemany`,
because SQLAlchemy's per-row parameter processing cost more than SQLite itself. The statements are written
once here, from the models' own column lists, in SQLite's style and turned into psycopg's for PostgreSQL:
named `:name` parameters (rows as dicts; `%(name)s`) or, for the writer's rows, `?` placeholders (rows as
tuples, no dict per row; `%s`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table
from sqlalchemy.orm import DeclarativeBase, Session

from pipeline.store.overview import database_now

#: Ids per IN (...) clause: under SQLite's default limit of host parameters.
IDS_PER_STATEMENT = 900


def table_of(model: type[DeclarativeBase]) -> Table:
    return cast(Table, model.__table__)


def columns(model: type[DeclarativeBase], *, without: Iterable[str] = ()) -> tuple[str, ...]:
    """The model's column names in table order, leaving out `without` (e.g. an autoincrement id)."""
    skip = set(without)
    return tuple(c.name for c in table_of(model).columns if c.name not in skip)


def insert_sql(model: type[DeclarativeBase], names: Sequence[str], *, positional: bool = False) -> str:
    """INSERT of `names` with named parameters of the same names (or `?` placeholders, in that order)."""
    table = table_of(model).name
    places = ["?" if positional else ":" + c for c in names]
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(places)})"


def upsert_sql(
    model: type[DeclarativeBase],
    key: str,
    names: Sequence[str],
    *,
    update: bool = True,
    positional: bool = False,
) -> str:
    """INSERT of `names` that, on a conflict on `key` (a column, or columns joined with ", "), updates every
    other column (or does nothing); `positional` as for `insert_sql`."""
    keys = {k.strip() for k in key.split(",")}
    action = (
        "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
        if update
        else "DO NOTHING"
    )
    return f"{insert_sql(model, names, positional=positional)} ON CONFLICT ({key}) {action}"


def is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def executemany(
    session: Session, sql: str, rows: Sequence[Mapping[str, Any]] | Sequence[tuple[Any, ...]]
) -> int:
    """Run `sql` once per row on the session's connection, in its transaction: rows as dicts for named
    `:params`, or as tuples for `?` placeholders (written SQLite's way; psycopg's are `%s`).

    Datetimes must already be in the driver's form (`db_time`). Returns the rows affected where the driver
    reports it (-1 otherwise).
    """
    if not rows:
        return 0
    if is_sqlite(session):
        text = sql
    elif isinstance(rows[0], tuple):
        text = sql.replace("?", "%s")
    else:
        text = re.sub(r":(\w+)", r"%(\1)s", sql)
    cursor = session.connection().connection.cursor()
    try:
        cursor.executemany(text, rows)
        return int(cursor.rowcount)
    finally:
        cursor.close()


def fetch(session: Session, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of `sql` (`?` placeholders, written SQLite's way) run once on the session's connection, in
    its transaction, straight through the driver: for the statements the writer runs per transaction,
    where building and compiling a SQLAlchemy statement cost more than the query."""
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(sql if is_sqlite(session) else sql.replace("?", "%s"), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def placeholders(n: int) -> str:
    """`?, ?, ...`: n of them, for an IN (...) list."""
    return ", ".join("?" * n)


def upsert(
    session: Session,
    model: type[DeclarativeBase],
    key: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    update: bool = True,
) -> None:
    """Insert `rows` (dicts of column values, datetimes as datetimes); on a conflict on `key`, update or skip.

    The one upsert of the store: results, limit states and blobs all go through it.
    """
    if not rows:
        return
    names = list(rows[0])
    sqlite = is_sqlite(session)
    converted = [{k: db_time_for(sqlite, v) for k, v in row.items()} for row in rows] if sqlite else rows
    executemany(session, upsert_sql(model, key, names, update=update), converted)


def db_time_for(sqlite: bool, value: Any) -> Any:
    """A value as the driver takes it: on SQLite a datetime becomes SQLAlchemy's text form."""
    if sqlite and isinstance(value, datetime):
        # "%Y-%m-%d %H:%M:%S.%f": isoformat writes it 4x faster than strftime for the naive datetimes
        # stored (an aware one would gain an offset there)
        if value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def fitter(model: type[DeclarativeBase]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that fits a row's text values to the model's columns, in place, and returns the row.

    Both databases then store the same thing: PostgreSQL refuses a string longer than its varchar and any
    NUL character, SQLite takes both. So NULs become U+FFFD and over-long strings are cut to the column.
    Keys that are not columns are left alone.
    """
    limits = _text_limits(model)

    def fit(row: dict[str, Any]) -> dict[str, Any]:
        for name, limit in limits.items():
            value = row.get(name)
            if isinstance(value, str):
                row[name] = fit_text(value, limit)
        return row

    return fit


def values_fitter(
    model: type[DeclarativeBase], names: Sequence[str]
) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """`fitter` for rows given as tuples of the values of `names`, in that order (the hot write path: no
    dict per row). Only the text columns' places are looked at; a row that fits comes back as it is."""
    limits = _text_limits(model)
    places = [(i, limits[name]) for i, name in enumerate(names) if name in limits]

    def fit(values: tuple[Any, ...]) -> tuple[Any, ...]:
        fitted: list[Any] | None = None
        for i, limit in places:
            value = values[i]
            if isinstance(value, str) and ("\x00" in value or (limit is not None and len(value) > limit)):
                if fitted is None:
                    fitted = list(values)
                fitted[i] = fit_text(value, limit)
        return values if fitted is None else tuple(fitted)

    return fit


def fit_text(value: str, limit: int | None) -> str:
    """`value` as both databases store it alike: NULs as U+FFFD, cut to `limit` characters if it has one."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:limit] if limit is not None and len(value) > limit else value


def _text_limits(model: type[DeclarativeBase]) -> dict[str, int | None]:
    """The model's text columns and their lengths (None: unbounded)."""
    return {c.name: c.type.length for c in table_of(model).columns if isinstance(c.type, String)}


def db_clock(session: Session) -> datetime:
    """Now on the database's clock, as the naive UTC datetime every time column holds (overview.py)."""
    return database_now(session)


def parts(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    """`ids` cut into pieces that fit one IN (...) clause."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start : start + IDS_PER_STATEMENT]
