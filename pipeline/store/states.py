"""The states a request, a batch and a Batch API part go through, and the clock every time column holds.

`str` enums stored as plain strings (models.py maps them to columns). Kept apart from the models, with no
SQLAlchemy import, so what only reads states (`status`, the report) never loads the ORM.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum


def utcnow() -> datetime:
    """Now, as the naive UTC datetime every time column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


class RequestStatus(StrEnum):
    QUEUED = "queued"  #: stored, waiting for a worker to claim it
    RUNNING = "running"  #: claimed by a worker, under a lease that the worker keeps renewing
    SUCCEEDED = "succeeded"  #: the API answered 2xx; the answer is in `results` (whatever its finish reason)
    FAILED = "failed"  #: a permanent error, or retries ran out; `error_type`/`error_message` say why
    CANCELLED = "cancelled"  #: cancelled before it was sent

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


#: Statuses a request never leaves on its own.
FINAL_STATUSES = frozenset({RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.CANCELLED})


class BatchState(StrEnum):
    IN_PROGRESS = "in_progress"  #: requests are sent as workers claim them
    PAUSED = "paused"  #: nothing is sent until `pipeline resume` (out of quota, a spend cap, a wrong key...)
    CANCELLING = "cancelling"  #: cancelled; requests that were in flight are still finishing
    CANCELLED = "cancelled"  #: cancelled, and every request is final; nothing more is sent
    COMPLETED = "completed"  #: every request is final (succeeded, failed or cancelled)

    @property
    def final(self) -> bool:
        return self in (BatchState.CANCELLED, BatchState.COMPLETED)


#: Batch states whose engines must send nothing more: their queued rows are cancelled.
CANCELLED_STATES = frozenset({BatchState.CANCELLING, BatchState.CANCELLED})


class Via(StrEnum):
    DIRECT = "direct"  #: sent by the engine, one HTTP request each, at the rate limit
    BATCH_API = "batch-api"  #: handed to the OpenAI Batch API in parts (half price, a 24 h window)


class PartState(StrEnum):
    """Where one Batch API part stands on our side; each remote step is recorded before and after."""

    PLANNED = "planned"  #: its rows are held by the part; nothing was sent yet
    UPLOADING = "uploading"  #: its input file is being uploaded (it may exist: looked up by name first)
    UPLOADED = "uploaded"  #: the input file id is recorded; no remote batch exists for this try
    CREATING = "creating"  #: the remote batch is being created (it may exist: looked up by metadata first)
    SUBMITTED = "submitted"  #: the remote batch id is recorded; polled until the API is done with it
    DONE = "done"  #: every row it held is stored (or back in the queue); nothing more to do

    @property
    def open(self) -> bool:
        return self is not PartState.DONE


class Dispatch(StrEnum):
    LOCAL = "local"  #: executed by the `pipeline run` process that stored it
    BROKER = "broker"  #: sent to workers through the broker (`pipeline submit`)
