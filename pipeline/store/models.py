"""The database: batches of requests, every HTTP attempt, and the stored result of each request.

States are `str` enums stored as plain strings, so the database reads well from any SQL client.
Times are naive UTC datetimes (SQLite has no time zones; PostgreSQL gets the same values).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The states live in states.py, where reading them loads no ORM; re-exported for the code that looks here.
from pipeline.store.states import CANCELLED_STATES as CANCELLED_STATES
from pipeline.store.states import FINAL_STATUSES as FINAL_STATUSES
from pipeline.store.states import BatchState as BatchState
from pipeline.store.states import Dispatch as Dispatch
from pipeline.store.states import PartState as PartState
from pipeline.store.states import RequestStatus as RequestStatus
from pipeline.store.states import Via as Via
from pipeline.store.states import utcnow as utcnow


def _states(enum: type[StrEnum]) -> Enum:
    """A column holding one of `enum`'s values as a plain string (no database enum type, no constraint)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    pass


class Batch(Base):
    """One submitted job file."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("content_key", name="uq_batches_content_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    source: Mapped[str] = mapped_column(Text)  #: the job file's path as given
    content_hash: Mapped[str] = mapped_column(String(64), index=True)  #: sha256 of the file and its options
    #: the content hash, unique: two intakes of the same file cannot both commit (None for --force copies)
    content_key: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[BatchState] = mapped_column(_states(BatchState), default=BatchState.IN_PROGRESS)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    base_url: Mapped[str] = mapped_column(Text)
    organization: Mapped[str | None] = mapped_column(String(128))
    key_fingerprint: Mapped[str] = mapped_column(String(32))  #: a hash of the API key, never the key
    total: Mapped[int] = mapped_column(Integer, default=0)
    dispatch: Mapped[Dispatch] = mapped_column(
        _states(Dispatch), default=Dispatch.LOCAL, server_default=Dispatch.LOCAL.value
    )
    options: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)  #: max_attempts, timeout, limits
    #: when the last request became final (state completed or cancelled); None while any is not
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: how its requests are sent (`--via`); the Batch API's own options are in `options`
    via: Mapped[Via] = mapped_column(_states(Via), default=Via.DIRECT, server_default=Via.DIRECT.value)
    #: the spend cap: the batch pauses before spent + reserved for requests in flight would exceed it
    max_cost_usd: Mapped[float | None] = mapped_column(Float)
    #: requests answered at intake from identical stored answers (--reuse), never sent
    reused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: its weight in the fair share of workers and rate limits: a batch at 3 gets three times a batch at 1
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: rows claimed by share / priority, from where it joined the running batches (store/fair.py)
    vtime: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: the broker queue its messages go to (None until it is first enqueued)
    queue: Mapped[str | None] = mapped_column(String(64))
    #: the pool of accounts it is sent through (`Pool.spec()`: names, URLs, key variable names and
    #: fingerprints, deployments, given limits; never a key); None: the account of whoever sends it
    accounts: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)


class Request(Base):
    """One line of a job file: the request body exactly as given, and where it stands."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id", name="uq_requests_batch_custom_id"),
        Index("ix_requests_batch_status", "batch_id", "status"),
        Index("ix_requests_status_worker", "status", "worker"),
        Index("ix_requests_batch_id_id", "batch_id", "id"),
        Index("ix_requests_request_key", "request_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)  #: line number in the job file (1-based)
    custom_id: Mapped[str] = mapped_column(String(512))
    url: Mapped[str] = mapped_column(String(64))  #: its endpoint's url; "" for an invalid line
    body: Mapped[str] = mapped_column(Text)  #: JSON text, sent as given
    status: Mapped[RequestStatus] = mapped_column(_states(RequestStatus), default=RequestStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: bumped by every claim: the holder writes only while the row still carries the fence it claimed
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)  #: last time a broker message named it
    worker: Mapped[str | None] = mapped_column(String(128))
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: the audio file of a transcription or translation, stored at intake; None for other endpoints
    blob_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blobs.sha256"))
    #: `direct` for a row of a batch-api batch that is sent directly (audio under --audio-direct, a line
    #: that expired under --on-expire direct); None: sent the batch's way
    via: Mapped[Via | None] = mapped_column(_states(Via))
    #: sha256 of endpoint, canonical body, base URL, organization and audio: equal keys, identical requests
    request_key: Mapped[str | None] = mapped_column(String(64))
    #: the request whose stored answer this one reuses (--reuse): never sent, no attempts, no cost
    reused_from: Mapped[int | None] = mapped_column(Integer)


class Worker(Base):
    """An engine that may hold rows (`pipeline run` or a worker process), alive while its beat moves.

    Others watch `beat` on their own monotonic clocks; no process's wall clock is compared with another's.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  #: host:pid:suffix
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    beat: Mapped[int] = mapped_column(Integer, default=0)  #: bumped every lease/4 while it lives
    #: its own lease: watchers give it this long without a beat (workers may be configured differently)
    lease_seconds: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: batch id -> [requests on the wire, USD reserved for them], saved every second while it sends
    flights: Mapped[dict[str, list[float]] | None] = mapped_column(JSON)


class Blob(Base):
    """An uploaded file (an audio clip), content-addressed: stored once however many requests name it.

    Kept in the database because workers on other machines must read it, and the original file may be gone
    by the time a worker sends the request.
    """

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  #: hex sha256 of `data`
    size: Mapped[int] = mapped_column(Integer)  #: bytes
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attempt(Base):
    """One HTTP attempt at one request, successful or not."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  #: 1 for the first attempt
    started_at: Mapped[datetime] = mapped_column(DateTime)
    latency_ms: Mapped[float] = mapped_column(Float)
    http_status: Mapped[int | None] = mapped_column(Integer)  #: None for timeouts and connection errors
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    x_request_id: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)  #: counted for failed attempts too
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    #: `batch-api` when the Batch API answered it (billed at the Batch API's price); None: sent directly
    via: Mapped[Via | None] = mapped_column(_states(Via))
    cached_tokens: Mapped[int | None] = mapped_column(Integer)  #: prompt tokens served from the cache
    audio_seconds: Mapped[float | None] = mapped_column(Float)  #: whisper-1 usage
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)  #: part of completion_tokens


class Part(Base):
    """A slice of a batch handed to the OpenAI Batch API: one endpoint, one model, one input file.

    It holds its rows (status running, worker `part:<id>`) under one fence, `fence`, from the claim that
    made it; every outcome is written only while a row still carries it. `holder` is the engine advancing
    it now (a registered worker, freed when that engine is buried). What is recorded before and after each
    remote step (state, input_file_id, tries, remote_batch_id) is what keeps a crash from uploading or
    creating it twice.
    """

    __tablename__ = "parts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))  #: the url of its rows' endpoint
    model: Mapped[str] = mapped_column(String(128))
    state: Mapped[PartState] = mapped_column(_states(PartState), default=PartState.PLANNED)
    fence: Mapped[int] = mapped_column(Integer)  #: the fence its claim gave every row it holds
    lines: Mapped[int] = mapped_column(Integer)  #: rows it was planned with, in id order in its file
    bytes: Mapped[int | None] = mapped_column(Integer)  #: size of its input file, once written
    #: remote batches created for it so far (one a rejected part is tried again with, after a while)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    holder: Mapped[str | None] = mapped_column(String(128))  #: the engine advancing it now, if any
    polls: Mapped[int] = mapped_column(Integer, default=0)  #: polls since its remote status last changed
    input_file_id: Mapped[str | None] = mapped_column(String(128))
    remote_batch_id: Mapped[str | None] = mapped_column(String(128))
    #: the remote batch's status: validating, in_progress, finalizing, completed, failed, expired, ...
    remote_status: Mapped[str | None] = mapped_column(String(32))
    request_total: Mapped[int | None] = mapped_column(Integer)  #: the remote batch's request_counts
    request_completed: Mapped[int | None] = mapped_column(Integer)
    request_failed: Mapped[int | None] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(128))
    error_file_id: Mapped[str | None] = mapped_column(String(128))
    #: why the API rejected it: its `errors.data` ({code, message, line}), or a refused create
    errors: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    #: not before (the database's clock): its next poll, or the next try of a part the API turned away
    next_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class Result(Base):
    """The final HTTP answer to a request: raw and parsed. Absent when no answer came (timeouts)."""

    __tablename__ = "results"

    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    http_status: Mapped[int] = mapped_column(Integer)
    x_request_id: Mapped[str | None] = mapped_column(String(128))
    content_type: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)  #: the response body as received
    response_id: Mapped[str | None] = mapped_column(String(128))  #: the body's `id`, e.g. chatcmpl-...
    model: Mapped[str | None] = mapped_column(String(128))
    finish_reasons: Mapped[str | None] = mapped_column(Text)  #: every choice's, joined with |
    output: Mapped[str | None] = mapped_column(Text)  #: the first choice's text, or the transcript
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    audio_seconds: Mapped[float | None] = mapped_column(Float)  #: whisper-1 usage, or verbose_json duration
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)  #: part of completion_tokens
    flagged: Mapped[bool | None] = mapped_column(Boolean)  #: a moderation: any input flagged
    dimensions: Mapped[int | None] = mapped_column(Integer)  #: embeddings: each vector's length
    #: embeddings: every vector as float32 little-endian, one after another in the answer's `data` order;
    #: `body` keeps each item with its `embedding` emptied ([] where the API sent floats, "" for base64).
    #: Last, so that reading the other columns of a row never reads through it.
    vectors: Mapped[bytes | None] = mapped_column(LargeBinary)


class LimitState(Base):
    """The limits in force for one key and its send rate, as a worker's limiter last saw them.

    Written by every engine every few seconds, read by `pipeline status`. `key` is the LimitKey
    (base URL | key fingerprint | organization | model): the API key itself is never stored.
    """

    __tablename__ = "limit_states"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    base_url: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    rpm: Mapped[int | None] = mapped_column(Integer)
    rpm_source: Mapped[str | None] = mapped_column(String(16))  #: given or learned
    tpm: Mapped[int | None] = mapped_column(Integer)
    tpm_source: Mapped[str | None] = mapped_column(String(16))
    sent_rpm: Mapped[float | None] = mapped_column(Float)  #: requests per minute sent lately
    sent_tpm: Mapped[float | None] = mapped_column(Float)
    cooldown_until: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AccountState(Base):
    """An account of a batch's pool that is benched (401/403, insufficient_quota, a missing deployment or
    route, a dead URL): no engine sends the batch's rows through it until `pipeline resume` deletes it."""

    __tablename__ = "account_states"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    account: Mapped[str] = mapped_column(String(128), primary_key=True)  #: the account's name in the pool
    reason: Mapped[str] = mapped_column(Text)
    benched_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BatchUsage(Base):
    """What the API charged a batch, per model: kept by every write of attempts, so `status` never scans them.

    Only attempts whose answer reported usage (tokens or audio seconds) add tokens; every attempt is counted.
    `tier` is how the attempts were sent ("direct"); the cost is computed when read, from the price table.
    """

    __tablename__ = "batch_usage"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)  #: as the request body names it
    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    charged: Mapped[int] = mapped_column(Integer, default=0)  #: attempts whose answer reported usage
    rate_limited: Mapped[int] = mapped_column(Integer, default=0)  #: attempts answered 429
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    first_sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class BatchFailure(Base):
    """Failed requests of a batch per error type and final HTTP status, kept as they fail (`status` reads
    these instead of every failed row); rebuilt from the rows when `retry` sends failed ones again."""

    __tablename__ = "batch_failures"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    error_type: Mapped[str] = mapped_column(String(64), primary_key=True)  #: "unknown" when none
    http_status: Mapped[int] = mapped_column(Integer, primary_key=True)  #: 0: no answer (timeout...)
    count: Mapped[int] = mapped_column(Integer, default=0)
    sample: Mapped[str | None] = mapped_column(Text)  #: one of their error messages


class BatchRate(Base):
    """How fast one batch was sending with one key lately, as one limiter saw it: `pipeline status`'s share.

    `source` is "shared" for the Redis limiter (every engine sees every engine's sends) and an engine's
    host:pid for an in-process limiter (its own sends only), so summing the fresh rows counts every send once.
    """

    __tablename__ = "batch_rates"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)  #: the LimitKey, as in limit_states
    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(128), primary_key=True)
    sent_rpm: Mapped[float] = mapped_column(Float)  #: requests per minute sent lately
    updated_at: Mapped[datetime] = mapped_column(DateTime)  #: the database's clock


class BatchSeries(Base):
    """A batch's attempts per second they started: the web view's charts over time, kept by every write of
    attempts (`store/series.py`), so the charts never scan the attempts."""

    __tablename__ = "batch_series"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    second: Mapped[datetime] = mapped_column(DateTime, primary_key=True)  #: started_at, to the second
    ok: Mapped[int] = mapped_column(Integer, default=0)  #: attempts answered 2xx
    rate_limited: Mapped[int] = mapped_column(Integer, default=0)  #: attempts answered 429
    errors: Mapped[int] = mapped_column(Integer, default=0)  #: other attempts: an HTTP error, no answer
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class BatchTally(Base):
    """A batch's attempts or answers counted by one category: `latency` (attempts per latency bucket of
    `store/series.LATENCY_BOUNDS`, `name` the bucket's number) and `finish` (succeeded answers per finish
    reasons, as `results.finish_reasons` joins them)."""

    __tablename__ = "batch_tallies"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


def last_latency() -> ColumnElement[float | None]:
    """The latency of a request's highest-numbered attempt, as a scalar subquery correlated to `Request`
    (the exports' `latency_ms`)."""
    return (
        select(Attempt.latency_ms)
        .where(Attempt.request_id == Request.id)
        .order_by(Attempt.number.desc())
        .limit(1)
        .correlate(Request)
        .scalar_subquery()
    )
