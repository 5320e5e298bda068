"""Turning a job file into a stored batch: streamed, validated, all-or-nothing.

Lines are validated and inserted in one write transaction as they stream past; if any line is bad (and
invalid lines are not to be skipped) or the same file was stored before, the transaction rolls back, so
nothing is stored and nothing can be sent. The audio clips that lines name are copied into the database in
that same transaction (`pipeline.audio`), so workers on other machines can send them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select, update

from pipeline import store
from pipeline.audio import BlobWriter, UnreadableAudio
from pipeline.db import Database
from pipeline.errors import DuplicateBatch, JobFileError, LineError
from pipeline.jobfile import STDIN_NAME, JobLine, JobReader
from pipeline.models import Batch, BatchState, RequestStatus, utcnow
from pipeline.settings import Settings

#: Rows per INSERT statement.
INSERT_CHUNK = 5000
#: Bad lines shown in full; the rest are counted.
MAX_SHOWN_ERRORS = 50


@dataclass(frozen=True)
class Intake:
    batch_id: str
    total: int
    invalid: int


def store_job_file(
    db: Database,
    settings: Settings,
    path: str,
    *,
    endpoint: str | None = None,
    skip_invalid: bool = False,
    force: bool = False,
) -> Intake:
    """Validate and store the job file as a new batch. Raises JobFileError or DuplicateBatch."""
    reader = JobReader(path, endpoint)
    batch_id = uuid.uuid4().hex[:12]
    shown: list[LineError] = []
    bad = good = 0
    with db.write() as s:
        s.add(
            Batch(
                id=batch_id,
                source=str(path),
                content_hash="",
                state=BatchState.ACTIVE,
                base_url=settings.base_url,
                organization=settings.organization,
                key_fingerprint=settings.key_fingerprint(),
                options={"endpoint": endpoint, "max_attempts": settings.max_attempts},
            )
        )
        s.flush()
        pending: list[dict[str, Any]] = []
        now = store.db_time(db, utcnow())
        blobs = BlobWriter(s)
        source = STDIN_NAME if str(path) == "-" else str(path)  # as the reader names it in LineErrors
        for line in reader:
            # Once a line is bad and bad lines are not skipped, everything rolls back: read no more clips.
            doomed = bad > 0 and not skip_invalid
            item, blob = (line, None) if doomed else _store_audio(blobs, line, source)
            if isinstance(item, LineError):
                bad += 1
                if len(shown) < MAX_SHOWN_ERRORS:
                    shown.append(item)
                if not skip_invalid:
                    continue
            else:
                good += 1
            pending.append(_row(batch_id, item, blob, now))
            if len(pending) >= INSERT_CHUNK:
                store.insert_requests(db, s, pending)
                pending.clear()
        if bad and (not skip_invalid or not good):
            raise JobFileError(shown, bad)
        store.insert_requests(db, s, pending)
        if not force and (existing := _same_content(s, reader.content_hash)):
            raise DuplicateBatch(existing)
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(content_hash=reader.content_hash, total=good + bad)
        )
    return Intake(batch_id, good + bad, bad)


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


def _row(batch_id: str, item: JobLine | LineError, blob: str | None, now: Any) -> dict[str, Any]:
    if isinstance(item, LineError):
        return {
            "batch_id": batch_id,
            "line": item.line,
            "custom_id": f"invalid-line-{item.line}",
            "url": "",
            "body": "null",
            "status": RequestStatus.FAILED.value,
            "attempts": 0,
            "error_type": "invalid_line",
            "error_message": str(item),
            "finished_at": now,
            "created_at": now,
            "blob_sha256": None,
        }
    return {
        "batch_id": batch_id,
        "line": item.line,
        "custom_id": item.custom_id,
        "url": item.url,
        "body": orjson.dumps(item.body).decode(),
        "status": RequestStatus.QUEUED,
        "attempts": 0,
        "error_type": None,
        "error_message": None,
        "finished_at": None,
        "created_at": now,
        "blob_sha256": blob,
    }


def _same_content(s: Any, content_hash: str) -> str | None:
    found: Iterable[str] = s.scalars(
        select(Batch.id).where(Batch.content_hash == content_hash).order_by(Batch.created_at).limit(1)
    )
    return next(iter(found), None)
