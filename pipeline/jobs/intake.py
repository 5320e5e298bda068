"""Turning a job file into a stored batch: streamed, validated, all-or-nothing.

Lines are validated and inserted in one write transaction as they stream past; if any line is bad (and
invalid lines are not to be skipped) or the same file was stored before, the transaction rolls back, so
nothing is stored and nothing can be sent. The audio clips that lines name are copied into the database in
that same transaction (`store.blobs`), so workers on other machines can send them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.orm import Session

from pipeline.accounts import Pool, batch_columns, pool_from_settings, refuse_unserved
from pipeline.batchapi.options import BatchApiOptions
from pipeline.endpoints import BY_URL, by_name
from pipeline.errors import ConfigError, DuplicateBatch, ErrorType, JobFileError, LineError
from pipeline.ids import new_batch_id
from pipeline.jobs.reader import STDIN_NAME, JobLine, JobReader
from pipeline.prices import load_prices
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.blobs import BlobWriter, UnreadableAudio
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, RequestStatus, Via, utcnow
from pipeline.store.reuse import request_key, reuse_answers
from pipeline.store.settle import settle_states
from pipeline.store.sql import db_time_for
from pipeline.store.usage import add_failures

#: Rows per INSERT statement.
INSERT_CHUNK = 5000
#: Bad lines shown in full; the rest are counted.
MAX_SHOWN_ERRORS = 50


@dataclass(frozen=True)
class Intake:
    batch_id: str
    total: int
    invalid: int
    #: requests answered from identical stored answers (--reuse): never sent
    reused: int = 0


def store_job_file(
    db: Database,
    settings: Settings,
    path: str,
    *,
    endpoint: str | None = None,
    skip_invalid: bool = False,
    force: bool = False,
    source: str | None = None,
    base_dir: Path | None = None,
    via: Via = Via.DIRECT,
    batch_api: BatchApiOptions | None = None,
    reuse: bool = False,
    max_cost_usd: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Intake:
    """Validate and store the job file as a new batch, to be sent `via` one way or the other (with
    `batch_api`'s options for the Batch API). Raises JobFileError or DuplicateBatch.

    `source` names the batch's origin for people (default: the path); audio files are named relative to
    `base_dir` (default: the job file's folder). Under the Batch API an audio line is a bad line (the API
    does not take audio) unless the options say to send audio directly. With `reuse`, requests identical
    to answered ones are answered from the store (store/reuse.py). `on_progress(lines read)` is called
    after every INSERT_CHUNK lines stored. A spend cap (`max_cost_usd`) with a model the price table in
    force does not price is refused (ConfigError): it could not be kept.
    """
    api = batch_api or BatchApiOptions()
    refuse_audio = via == Via.BATCH_API and not api.audio_direct
    reader = JobReader(
        path,
        endpoint,
        max_line_bytes=settings.max_line_bytes,
        base_dir=base_dir,
        audio_roots=settings.audio_roots,
    )
    batch_id = new_batch_id()
    options = {"endpoint": endpoint, "max_attempts": settings.max_attempts, "reuse": reuse}
    options |= api.to_options() if via == Via.BATCH_API else {}
    pool = pool_from_settings(settings)
    if endpoint is not None:
        refuse_unserved(pool, by_name(endpoint).azure, endpoint)
    if via == Via.BATCH_API and not pool.default:
        raise ConfigError("--via batch-api sends through one OpenAI account: not with --accounts or Azure")
    row = _batch_row(batch_id, pool, source or str(path), options, via, max_cost_usd)
    count = _Count()
    with db.write() as s:
        batches.new_batch(s, row)
        now = db_time_for(db.is_sqlite, utcnow())
        lines = _Lines(s, reader, batch_id, settings, now, refuse_audio, skip_invalid, on_progress)
        lines.store(count)
        if count.bad and (not skip_invalid or not count.good):
            raise JobFileError(count.shown, count.bad)
        if max_cost_usd is not None:
            refuse_unpriced(settings, lines.models, pool.aliases())
        reused = _seal(s, batch_id, reader.content_hash, count, force=force, reuse=reuse, now=now)
    if reused:
        settle_states(db, [batch_id])  # every line may have been answered already
    return Intake(batch_id, count.good + count.bad, count.bad, reused)


def _batch_row(
    batch_id: str,
    pool: Pool,
    source: str,
    options: dict[str, Any],
    via: Via,
    max_cost_usd: float | None,
) -> Batch:
    return Batch(
        id=batch_id,
        source=source,
        content_hash="",
        state=BatchState.IN_PROGRESS,
        **batch_columns(pool),
        options=options,
        via=via,
        max_cost_usd=max_cost_usd,
    )


@dataclass
class _Count:
    """Lines stored so far: good, bad, and the bad ones shown (a hint once per file)."""

    good: int = 0
    bad: int = 0
    shown: list[LineError] = field(default_factory=list)
    hints: set[str] = field(default_factory=set)

    def bad_line(self, error: LineError) -> None:
        self.bad += 1
        if len(self.shown) < MAX_SHOWN_ERRORS and error.hint not in self.hints:
            self.shown.append(error)
        if error.hint:
            self.hints.add(error.hint)


@dataclass
class _Lines:
    """The job file's lines, streamed into intake's transaction a chunk of rows at a time."""

    s: Session
    reader: JobReader
    batch_id: str
    settings: Settings
    now: Any
    refuse_audio: bool
    skip_invalid: bool
    on_progress: Callable[[int], None] | None
    #: the models the valid lines are priced by (free endpoints' left out)
    models: set[str] = field(default_factory=set)

    def store(self, count: _Count) -> None:
        pending: list[dict[str, Any]] = []
        blobs = BlobWriter(self.s)
        source = STDIN_NAME if str(self.reader.path) == "-" else str(self.reader.path)  # as in LineErrors
        for line in self.reader:
            # Once a line is bad and bad lines are not skipped, everything rolls back: read no more clips.
            doomed = count.bad > 0 and not self.skip_invalid
            if self.refuse_audio:
                line = _refuse_audio(line, source)
            item, blob = (line, None) if doomed else _store_audio(blobs, line, source)
            if isinstance(item, LineError):
                count.bad_line(item)
                if not self.skip_invalid:
                    continue
                custom_id = self.reader.ids.for_invalid(item.line)
            else:
                count.good += 1
                custom_id = item.custom_id
                endpoint = BY_URL[item.url]
                if not endpoint.free:  # a free endpoint's model needs no price (moderations)
                    self.models.add(endpoint.model_of(item.body))
            pending.append(_row(self.batch_id, item, custom_id, blob, self.now, self.settings))
            if len(pending) >= INSERT_CHUNK:
                self._flush(pending)
        batches.insert_requests(self.s, pending)

    def _flush(self, pending: list[dict[str, Any]]) -> None:
        batches.insert_requests(self.s, pending)
        pending.clear()
        if self.on_progress is not None:
            self.on_progress(self.reader.lines_read)


def refuse_unpriced(settings: Settings, models: set[str], aliases: Mapping[str, str] | None = None) -> None:
    """ConfigError, in one line, when the price table in force has no price for some of `models` (Azure
    deployments priced as the models they serve, `aliases`): a spend cap cannot be kept on what cannot be
    priced."""
    unpriced = load_prices(settings).with_aliases(aliases or {}).unpriced(models)
    if unpriced:
        raise ConfigError(
            f"--max-cost needs a price for every model of the batch: no price for {', '.join(unpriced)} "
            "(add them with --prices FILE, or run `pipeline prices update`)"
        )


def _seal(
    s: Session, batch_id: str, content_hash: str, count: _Count, *, force: bool, reuse: bool, now: Any
) -> int:
    """End intake's transaction: the content key (DuplicateBatch if stored before), the invalid lines
    counted as failures, and with `reuse` the answers reused (how many)."""
    existing = batches.seal_batch(s, batch_id, content_hash, count.good + count.bad, unique=not force)
    if existing is not None:
        raise DuplicateBatch(existing)
    if count.bad:
        sample = str(count.shown[0])
        add_failures(s, ((batch_id, ErrorType.INVALID_LINE.value, None, sample) for _ in range(count.bad)))
    reused = reuse_answers(s, batch_id, now) if reuse else 0
    if reused:
        batches.set_reused(s, batch_id, reused)
    return reused


def _refuse_audio(item: JobLine | LineError, source: str) -> JobLine | LineError:
    """A line of a batch sent through the Batch API whose endpoint it does not take (audio) is a bad line."""
    if isinstance(item, LineError) or BY_URL[item.url].batch_api:
        return item
    return LineError(
        source,
        item.line,
        f"the Batch API does not take {item.url} requests",
        hint="pass --audio-direct to send the audio lines directly (the rest through the Batch API)",
    )


def _store_audio(
    blobs: BlobWriter, item: JobLine | LineError, source: str
) -> tuple[JobLine | LineError, str | None]:
    """Store the clip of an audio line in the intake's transaction: the line and its blob's sha256.

    A clip that vanished or changed since validation makes the line bad, like any other problem with it.
    """
    if isinstance(item, LineError) or item.audio_path is None:
        return item, None
    try:
        return item, blobs.add(item.audio_path, str(item.body["file"]))
    except UnreadableAudio as exc:
        return LineError(source, item.line, exc.problem), None


def _row(
    batch_id: str, item: JobLine | LineError, custom_id: str, blob: str | None, now: Any, settings: Settings
) -> dict[str, Any]:
    if isinstance(item, LineError):
        return {
            "batch_id": batch_id,
            "line": item.line,
            "custom_id": custom_id,
            "url": "",
            "body": "null",
            "status": RequestStatus.FAILED.value,
            "attempts": 0,
            "error_type": ErrorType.INVALID_LINE.value,
            "error_message": str(item),
            "finished_at": now,
            "created_at": now,
            "blob_sha256": None,
            "request_key": None,
            "reused_from": None,
        }
    key = request_key(item.url, item.body, settings.base_url, settings.organization, blob)
    return {
        "batch_id": batch_id,
        "line": item.line,
        "custom_id": custom_id,
        "url": item.url,
        "body": orjson.dumps(item.body).decode(),
        "status": RequestStatus.QUEUED.value,
        "attempts": 0,
        "error_type": None,
        "error_message": None,
        "finished_at": None,
        "created_at": now,
        "blob_sha256": blob,
        "request_key": key,
        "reused_from": None,
    }
