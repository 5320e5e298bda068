"""What the engine hands the writer for one claimed request: its attempts and how it ended.

Plain records, apart from the SQL that stores them (`claims.record`) and the counters that add them up
(`series.add_outcomes`, `usage`), so both read them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.store.states import RequestStatus


@dataclass(slots=True)
class AttemptRecord:
    """One HTTP attempt, as the `attempts` table stores it (every column but the ids)."""

    number: int
    started_at: datetime
    latency_ms: float
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    x_request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    audio_seconds: float | None = None
    #: "batch-api" when the Batch API answered it; None when it was sent directly
    via: str | None = None
    reasoning_tokens: int | None = None


@dataclass(slots=True)
class Outcome:
    """What became of one claimed request: final (succeeded/failed/cancelled) or released back to queued."""

    request_id: int
    fence: int
    status: RequestStatus
    attempts: list[AttemptRecord] = field(default_factory=list)
    result: dict[str, Any] | None = None  #: Result columns, without request_id
    error_type: str | None = None
    error_message: str | None = None
    #: the row's batch and the model its body names: whose usage counters the attempts add to
    batch_id: str = ""
    model: str = ""
