"""A batch as `status` and the web view read it, on SQLAlchemy Core alone: nothing here loads the ORM.

Importing the ORM and mapping the models costs a short command more than the rest of its work together (a
`pipeline status` took 2.1x the instructions of `import sqlalchemy, click`, half of it the ORM), so the
reads `status` makes, and the values they return, live here: the batch, its counts by status, usage and
failure counters, requests in flight, the limits in force, its Batch API parts and its share of its keys'
sends. The other store modules re-export them. The tables are named by the few columns read, each as the
models declare it (tests/test_cli_startup.py holds them to the models).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import JSON, DateTime, Float, Integer, String, column, func, select, table
from sqlalchemy.engine import Connection

from pipeline.errors import BatchNotFound
from pipeline.store.db import Database
from pipeline.store.states import BatchState, PartState, RequestStatus, Via

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: How attempts sent one by one to the API are priced; the Batch API's are "batch-api" (half price).
DIRECT = "direct"
#: A rate saved longer ago than this is not "current": its engine stopped sending, or stopped.
FRESH_SECONDS = 30

BATCHES = table(
    "batches",
    *(column(c, String) for c in ("id", "source", "state", "pause_reason", "base_url", "key_fingerprint")),
    column("organization", String),
    column("accounts", JSON),
    column("created_at", DateTime),
    column("finished_at", DateTime),
    column("via", String),
    column("max_cost_usd", Float),
    column("reused", Integer),
    column("priority", Integer),
)
REQUESTS = table("requests", column("batch_id", String), column("status", String))
WORKERS = table("workers", column("flights", JSON))
_COUNTERS = ("attempts", "charged", "rate_limited", "prompt_tokens", "cached_tokens", "completion_tokens")
BATCH_USAGE = table(
    "batch_usage",
    *(column(c, String) for c in ("batch_id", "model", "tier")),
    *(column(c, Integer) for c in (*_COUNTERS, "total_tokens", "reasoning_tokens")),
    column("audio_seconds", Float),
    column("first_sent_at", DateTime),
)
BATCH_FAILURES = table(
    "batch_failures",
    *(column(c, String) for c in ("batch_id", "error_type", "sample")),
    column("http_status", Integer),
    column("count", Integer),
)
LIMIT_STATES = table(
    "limit_states",
    *(column(c, String) for c in ("base_url", "key_fingerprint", "model", "rpm_source", "tpm_source")),
    *(column(c, Integer) for c in ("rpm", "tpm")),
    *(column(c, Float) for c in ("sent_rpm", "sent_tpm")),
    *(column(c, DateTime) for c in ("cooldown_until", "updated_at")),
)
_PART_TEXT = ("id", "batch_id", "endpoint", "model", "state", "remote_batch_id", "remote_status")
_PART_FILES = ("input_file_id", "output_file_id", "error_file_id")
PARTS = table(
    "parts",
    *(column(c, String) for c in (*_PART_TEXT, *_PART_FILES)),
    *(column(c, Integer) for c in ("lines", "tries", "request_total", "request_completed", "request_failed")),
    column("errors", JSON),
    *(column(c, DateTime) for c in ("created_at", "finished_at")),
)
BATCH_RATES = table(
    "batch_rates",
    *(column(c, String) for c in ("key", "batch_id")),
    column("sent_rpm", Float),
    column("updated_at", DateTime),
)
ACCOUNT_STATES = table("account_states", *(column(c, String) for c in ("batch_id", "account", "reason")))
#: Every table read here, for the test that holds them to the models.
TABLES = (
    BATCHES,
    REQUESTS,
    WORKERS,
    BATCH_USAGE,
    BATCH_FAILURES,
    LIMIT_STATES,
    PARTS,
    BATCH_RATES,
    ACCOUNT_STATES,
)


class BatchFields(Protocol):
    """What the report reads of a batch: a stored `models.Batch` or a `BatchInfo` from here."""

    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def source(self) -> str: ...
    @property
    def state(self) -> BatchState: ...
    @property
    def pause_reason(self) -> str | None: ...
    @property
    def base_url(self) -> str: ...
    @property
    def key_fingerprint(self) -> str: ...
    @property
    def organization(self) -> str | None: ...
    @property
    def accounts(self) -> list[dict[str, object]] | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def via(self) -> Via: ...
    @property
    def max_cost_usd(self) -> float | None: ...
    @property
    def reused(self) -> int: ...
    @property
    def priority(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch as `find_batch` reads it (the columns of BATCHES)."""

    id: str
    source: str
    state: BatchState
    pause_reason: str | None
    base_url: str
    key_fingerprint: str
    organization: str | None
    accounts: list[dict[str, object]] | None
    created_at: datetime
    finished_at: datetime | None
    via: Via
    max_cost_usd: float | None
    reused: int
    priority: int


def find_batch(db: Database, batch_id: str | None) -> BatchInfo:
    """The batch with this id (a unique prefix is enough), or the newest when None."""
    stmt = select(BATCHES)
    if batch_id is None:
        stmt = stmt.order_by(BATCHES.c.created_at.desc(), BATCHES.c.id.desc()).limit(1)
    else:
        stmt = stmt.where(BATCHES.c.id.startswith(batch_id, autoescape=True)).limit(2)
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if batch_id is None and not rows:
        raise BatchNotFound("no batches yet: submit or run a job file first")
    if len(rows) != 1:
        raise BatchNotFound(f"no batch {batch_id!r}" if not rows else f"batch id {batch_id!r} is ambiguous")
    values = dict(rows[0]._mapping)
    return BatchInfo(**{**values, "state": BatchState(values["state"]), "via": Via(values["via"])})


def benched(db: Database, batch_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """batch id -> {account name: reason} for every benched account of these batches (store/account_states.py
    writes them)."""
    ids = list(batch_ids)
    found: dict[str, dict[str, str]] = {}
    if not ids:
        return found
    table_ = ACCOUNT_STATES.c
    stmt = select(table_.batch_id, table_.account, table_.reason).where(table_.batch_id.in_(ids))
    with db.engine.connect() as conn:
        for batch_id, account, reason in conn.execute(stmt):
            found.setdefault(batch_id, {})[account] = reason
    return found


def status_counts(db: Database, batch_id: str) -> dict[str, int]:
    """Requests of the batch by status, every status present (0 when none), plus `total`.

    One index-only pass over (batch_id, status): about 0.15 s for a million rows on SQLite.
    """
    stmt = (
        select(REQUESTS.c.status, func.count())
        .where(REQUESTS.c.batch_id == batch_id)
        .group_by(REQUESTS.c.status)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    counts = {status.value: 0 for status in RequestStatus}
    counts.update({status: n for status, n in rows})
    return {"total": sum(counts.values()), **counts}


def in_flight(db: Database, batch_id: str) -> tuple[int, float]:
    """Requests of the batch on the wire now, and the USD reserved for them, as engines last saved them."""
    with db.engine.connect() as conn:
        flights = conn.scalars(select(WORKERS.c.flights).where(WORKERS.c.flights.is_not(None))).all()
    on_wire = [f[batch_id] for f in flights if f and batch_id in f]
    return int(sum(n for n, _ in on_wire)), float(sum(usd for _, usd in on_wire))


@dataclass(slots=True)
class Usage:
    """Counters of one (batch, model, tier): what a transaction adds, or what `usage_of` reads."""

    model: str
    tier: str = DIRECT
    attempts: int = 0
    charged: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    audio_seconds: float = 0.0
    first_sent_at: datetime | None = None
    reasoning_tokens: int = 0

    def add_attempt(
        self,
        started_at: datetime,
        http_status: int | None,
        tokens: tuple[int | None, int | None, int | None, int | None, int | None],
        audio_seconds: float | None,
    ) -> None:
        """Count one attempt; `tokens` is (prompt, cached, completion, total, reasoning), None where not
        reported."""
        self.attempts += 1
        self.rate_limited += http_status == 429
        if any(t is not None for t in tokens) or audio_seconds is not None:
            self.charged += 1
        prompt, cached, completion, total, reasoning = (t or 0 for t in tokens)
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        self.total_tokens += total
        self.reasoning_tokens += reasoning
        self.audio_seconds += audio_seconds or 0.0
        if self.first_sent_at is None or started_at < self.first_sent_at:
            self.first_sent_at = started_at


@dataclass(slots=True)
class BatchTotals:
    """A batch's counters over every model, and per model."""

    models: list[Usage] = field(default_factory=list)

    def total(self, name: str) -> int:
        return int(sum(getattr(u, name) for u in self.models))

    @property
    def first_sent_at(self) -> datetime | None:
        times = [u.first_sent_at for u in self.models if u.first_sent_at is not None]
        return min(times) if times else None


def usage_of(db: Database, batch_ids: Sequence[str]) -> dict[str, BatchTotals]:
    """The counters of each batch (an empty BatchTotals for one with no attempt yet)."""
    totals = {batch_id: BatchTotals() for batch_id in batch_ids}
    if not batch_ids:
        return totals
    u = BATCH_USAGE.c
    with db.engine.connect() as conn:
        rows = conn.execute(select(BATCH_USAGE).where(u.batch_id.in_(list(batch_ids)))).all()
    for row in rows:
        values = dict(row._mapping)
        totals[values.pop("batch_id")].models.append(Usage(**values))
    return totals


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed requests of one error type and final HTTP status (None: no answer, e.g. a timeout)."""

    error_type: str
    http_status: int | None
    count: int
    sample: str | None  #: one of their error messages


def failure_groups(db: Database, batch_id: str, limit: int = 10) -> list[FailureGroup]:
    """The batch's failed requests grouped by error type and HTTP status, most common first (from the
    failure counters: a few rows however many failed)."""
    f = BATCH_FAILURES.c
    stmt = (
        select(f.error_type, f.http_status, f.count, f.sample)
        .where(f.batch_id == batch_id, f.count > 0)
        .order_by(f.count.desc(), f.error_type)
        .limit(limit)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [FailureGroup(etype, status or None, n, sample) for etype, status, n, sample in rows]


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """The limits in force for one model of a key and its send rate, as an engine's limiter last saw them."""

    base_url: str
    key_fingerprint: str
    model: str
    rpm_source: str | None
    tpm_source: str | None
    rpm: int | None
    tpm: int | None
    sent_rpm: float | None
    sent_tpm: float | None
    cooldown_until: datetime | None
    updated_at: datetime


def limit_states(db: Database, base_url: str, key_fingerprint: str) -> list[LimitInfo]:
    """The saved limit states of every model used with this base URL and API key."""
    c = LIMIT_STATES.c
    stmt = (
        select(LIMIT_STATES)
        .where(c.base_url == base_url, c.key_fingerprint == key_fingerprint)
        .order_by(c.model)
    )
    with db.engine.connect() as conn:
        return [LimitInfo(**row._mapping) for row in conn.execute(stmt)]


class PartFields(Protocol):
    """What the report reads of a Batch API part: a stored `models.Part` or a `PartInfo` from here."""

    @property
    def id(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def lines(self) -> int: ...
    @property
    def state(self) -> PartState: ...
    @property
    def remote_batch_id(self) -> str | None: ...
    @property
    def remote_status(self) -> str | None: ...
    @property
    def request_total(self) -> int | None: ...
    @property
    def request_completed(self) -> int | None: ...
    @property
    def request_failed(self) -> int | None: ...
    @property
    def tries(self) -> int: ...
    @property
    def input_file_id(self) -> str | None: ...
    @property
    def output_file_id(self) -> str | None: ...
    @property
    def error_file_id(self) -> str | None: ...
    @property
    def errors(self) -> list[dict[str, object]] | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A Batch API part as `parts_of` reads it (the columns of PARTS)."""

    id: str
    batch_id: str
    endpoint: str
    model: str
    state: PartState
    remote_batch_id: str | None
    remote_status: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    lines: int
    tries: int
    request_total: int | None
    request_completed: int | None
    request_failed: int | None
    errors: list[dict[str, object]] | None
    created_at: datetime
    finished_at: datetime | None


def parts_of(db: Database, batch_id: str) -> list[PartInfo]:
    """Every part of the batch, oldest first."""
    stmt = select(PARTS).where(PARTS.c.batch_id == batch_id).order_by(PARTS.c.created_at, PARTS.c.id)
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [PartInfo(**{**row._mapping, "state": PartState(row.state)}) for row in rows]


def shares(db: Database, batch_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """For each of these batches sending lately: its requests/min (`sent_rpm`) and its share of what was
    sent with the keys it used (`share`, 0..1). Batches not sending lately are left out."""
    wanted = set(batch_ids)
    if not wanted:
        return {}
    r = BATCH_RATES.c
    with db.engine.connect() as conn:
        since = database_now(conn) - timedelta(seconds=FRESH_SECONDS)
        rows = conn.execute(select(r.key, r.batch_id, r.sent_rpm).where(r.updated_at >= since)).all()
    per_key: dict[str, float] = defaultdict(float)
    mine: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, batch_id, rpm in rows:
        per_key[key] += rpm
        if batch_id in wanted:
            mine[batch_id][key] += rpm
    result: dict[str, dict[str, float]] = {}
    for batch_id, keys in mine.items():
        sent, total = sum(keys.values()), sum(per_key[k] for k in keys)
        if sent > 0 and total > 0:
            result[batch_id] = {"sent_rpm": round(sent, 1), "share": round(sent / total, 3)}
    return result


def database_now(conn: Connection | Session) -> datetime:
    """Now on the database's clock, as the naive UTC datetime every time column holds (`conn`: a Core
    connection or an ORM session).

    PostgreSQL has a clock of its own, shared by every worker; SQLite runs inside the calling process and
    reads that process's clock (one machine, so one clock, unless a test fakes it).
    """
    bind = conn if isinstance(conn, Connection) else conn.get_bind()
    if bind.dialect.name == "sqlite":
        text = conn.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
        return datetime.fromisoformat(str(text))
    value = conn.scalar(select(func.timezone("UTC", func.now())))
    assert isinstance(value, datetime)
    return value
