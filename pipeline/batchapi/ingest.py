"""Storing what the Batch API made of a part: its output and error files, its expired lines, a rejection.

Each line of the output and error files is matched to the row the part holds by custom_id and stored as
the engine stores an answer: one attempt (status, request id, usage, marked `via` batch-api), the
results row (`send.responses.result_row`), and the status: a 2xx whose body is the endpoint's answer
(`parse_data`) succeeds; any other 2xx fails with `bad_response`, an HTTP error fails with the API's
error (`classify`), a line with an `error` fails with its code. Everything goes through the writer
(`send/writer.py`): fenced by the part's fence (a row no longer the part's is not written), batched,
retried while the database fails, and no outcome that cannot be stored blocks the others.

Lines that expired (`batch_expired`, or rows of an expired batch that no file mentions) are recorded as
an attempt and then, per --on-expire, go back to the queue for a new part (`resubmit`), back to the queue
to be sent directly (`direct`), or fail (`fail`, and any line that has had max_attempts attempts).
Storing is idempotent: run again after a crash, the rows already stored are simply not written twice.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.batchapi.client import BatchClient
from pipeline.batchapi.options import OnExpire
from pipeline.endpoints import by_url
from pipeline.errors import APIError, ErrorType
from pipeline.send.classify import classify
from pipeline.send.estimates import usage
from pipeline.send.responses import Parsed, parse_data, result_row
from pipeline.send.writer import Writer
from pipeline.store import parts
from pipeline.store.claims import AttemptRecord, Outcome
from pipeline.store.db import Database
from pipeline.store.models import Part, RequestStatus, Via, utcnow

#: What an expired line's attempt says.
EXPIRED_MESSAGE = "the Batch API did not get to this request within its 24 h completion window"
_VIA = Via.BATCH_API.value


@dataclass(frozen=True, slots=True)
class Held:
    """A row the part holds."""

    id: int
    url: str
    attempts: int


@dataclass
class Tally:
    """What storing a part's answers did."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    requeued: int = 0
    #: outcomes not written: their rows were no longer the part's
    lost: int = 0
    #: rows put back in the queue to be sent directly
    direct: list[int] = field(default_factory=list)

    def count(self, stored: list[Outcome], dropped: list[Outcome]) -> None:
        for outcome in stored:
            name = {
                RequestStatus.SUCCEEDED: "succeeded",
                RequestStatus.FAILED: "failed",
                RequestStatus.CANCELLED: "cancelled",
            }.get(outcome.status, "requeued")
            setattr(self, name, getattr(self, name) + 1)
        self.lost += len(dropped)


@dataclass(frozen=True, slots=True)
class Window:
    """When the remote batch ran: the start and length every attempt of its lines is recorded with."""

    started_at: datetime
    latency_ms: float

    @classmethod
    def of(cls, remote: Mapping[str, Any]) -> Window:
        start = _stamp(remote.get("in_progress_at")) or _stamp(remote.get("created_at")) or utcnow()
        ends = ("finalizing_at", "completed_at", "expired_at", "cancelled_at", "failed_at")
        end = next((t for t in (_stamp(remote.get(name)) for name in ends) if t is not None), utcnow())
        return cls(start, max(0.0, (end - start).total_seconds() * 1000.0))

    def attempt(self, row: Held, **fields: Any) -> AttemptRecord:
        """The attempt the Batch API made at `row`."""
        return AttemptRecord(row.attempts + 1, self.started_at, self.latency_ms, via=_VIA, **fields)


class _PartWriter:
    """The writer, for outcomes that name the part's batch and model (whose usage counters they feed)."""

    def __init__(self, writer: Writer, part: Part) -> None:
        self._writer, self._part = writer, part

    def put(self, outcome: Outcome) -> None:
        self._writer.put(_of_part(self._part, outcome))

    async def join(self) -> None:
        await self._writer.join()


def _of_part(part: Part, outcome: Outcome) -> Outcome:
    outcome.batch_id, outcome.model = part.batch_id, part.model
    return outcome


def held_rows(db: Database, part: Part) -> dict[str, Held]:
    """custom_id -> row, for every row the part still holds."""
    return {c: Held(i, u, a) for i, c, u, _b, a in parts.part_rows(db, part)}


async def store_answers(
    client: BatchClient,
    db: Database,
    part: Part,
    remote: Mapping[str, Any],
    *,
    on_expire: OnExpire,
    max_attempts: int,
    cancelled: bool,
) -> Tally:
    """Store the answers of a part whose remote batch has ended (completed, expired or cancelled)."""
    held = await asyncio.to_thread(held_rows, db, part)
    window = Window.of(remote)
    tally = Tally()
    expired: list[Held] = []
    async with Writer(db, tally.count) as sink:
        writer = _PartWriter(sink, part)
        for file_id in (remote.get("output_file_id"), remote.get("error_file_id")):
            if isinstance(file_id, str) and file_id:
                expired += await _store_file(client, file_id, held, part.fence, window, writer)
        leftover = list(held.values())
        if remote.get("status") == "expired":
            expired, leftover = expired + leftover, []
        for row in leftover:  # the files say nothing of them
            writer.put(_unanswered(row, part.fence, cancelled or remote.get("status") == "cancelled"))
        requeue = _expire(expired, part.fence, window, on_expire, max_attempts, cancelled, writer)
        await writer.join()
    await _requeue(db, part, requeue, on_expire is OnExpire.DIRECT, tally)
    return tally


async def _store_file(
    client: BatchClient, file_id: str, held: dict[str, Held], fence: int, window: Window, writer: _PartWriter
) -> list[Held]:
    """Put an outcome for every line of the file that names a held row; returns the rows that expired."""
    expired: list[Held] = []
    with tempfile.TemporaryFile() as fh:
        await client.download(file_id, fh)
        fh.seek(0)
        for raw in fh:
            line = _line(raw)
            row = held.pop(str(line["custom_id"]), None) if line else None  # each row once
            if line is None or row is None:
                continue
            outcome = line_outcome(row, fence, line, window)
            if outcome is None:
                expired.append(row)
            else:
                writer.put(outcome)
    return expired


def line_outcome(row: Held, fence: int, line: Mapping[str, Any], window: Window) -> Outcome | None:
    """What one output or error file line makes of its row; None when the line expired."""
    response = line.get("response")
    if isinstance(response, dict):
        return _answered(row, fence, response, window)
    found = line.get("error")
    error: Mapping[str, Any] = found if isinstance(found, dict) else {}
    code = str(error.get("code") or ErrorType.API_ERROR)
    if code == ErrorType.BATCH_EXPIRED:
        return None
    message = str(error.get("message") or "the Batch API gave no answer")
    attempt = window.attempt(row, error_type=code, error_message=message)
    return Outcome(row.id, fence, RequestStatus.FAILED, [attempt], None, code, message)


def _answered(row: Held, fence: int, response: Mapping[str, Any], window: Window) -> Outcome:
    status = response.get("status_code")
    status = status if isinstance(status, int) else 0
    request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
    body = response.get("body")
    parsed: Parsed | None = None
    error: APIError | None = None
    if 200 <= status < 300:
        try:  # the line's body is parsed already: read it as it is (an embedding's vectors taken out)
            parsed = parse_data(by_url(row.url), status, body)
        except APIError as bad:
            error = bad
    raw = parsed.body if parsed is not None and parsed.body is not None else orjson.dumps(body)
    if not 200 <= status < 300:
        error = classify(status, {"x-request-id": request_id or ""}, raw)
    used = usage(parsed, raw)
    attempt = window.attempt(
        row,
        http_status=status,
        error_type=error.error_type if error else None,
        error_message=error.message if error else None,
        x_request_id=request_id,
        prompt_tokens=used.prompt_tokens,
        completion_tokens=used.completion_tokens,
        total_tokens=used.total_tokens,
        cached_tokens=used.cached_tokens,
        audio_seconds=used.audio_seconds,
        reasoning_tokens=used.reasoning_tokens,
    )
    result = result_row(status, request_id, None, raw, parsed)
    if error is not None:
        return Outcome(
            row.id, fence, RequestStatus.FAILED, [attempt], result, error.error_type, error.message
        )
    return Outcome(row.id, fence, RequestStatus.SUCCEEDED, [attempt], result)


def _unanswered(row: Held, fence: int, cancelled: bool) -> Outcome:
    """A row the finished batch's files do not mention: cancelled with it, or missing from its answers."""
    if cancelled:
        return Outcome(row.id, fence, RequestStatus.CANCELLED, [], None, ErrorType.CANCELLED, "cancelled")
    message = "the Batch API finished this request's part without an answer or an error for it"
    return Outcome(row.id, fence, RequestStatus.FAILED, [], None, ErrorType.MISSING_ANSWER, message)


def _expire(
    rows: Sequence[Held],
    fence: int,
    window: Window,
    on_expire: OnExpire,
    max_attempts: int,
    cancelled: bool,
    writer: _PartWriter,
) -> list[Outcome]:
    """Put the final outcomes of expired rows; returns those that go back to the queue."""
    back: list[Outcome] = []
    for row in rows:
        attempt = window.attempt(row, error_type=ErrorType.BATCH_EXPIRED, error_message=EXPIRED_MESSAGE)
        if cancelled:
            status, reason = RequestStatus.CANCELLED, ErrorType.CANCELLED
        elif on_expire is OnExpire.FAIL or row.attempts + 1 >= max_attempts:
            status, reason = RequestStatus.FAILED, ErrorType.BATCH_EXPIRED
        else:
            back.append(Outcome(row.id, fence, RequestStatus.QUEUED, [attempt]))
            continue
        message = "cancelled" if cancelled else EXPIRED_MESSAGE
        writer.put(Outcome(row.id, fence, status, [attempt], None, reason, message))
    return back


async def _requeue(db: Database, part: Part, outcomes: list[Outcome], direct: bool, tally: Tally) -> None:
    for outcome in outcomes:
        _of_part(part, outcome)
    refused = await asyncio.to_thread(parts.requeue, db, part, outcomes, direct)
    gone = {id(o) for o in refused}
    tally.count([o for o in outcomes if id(o) not in gone], refused)
    if direct:
        tally.direct += [o.request_id for o in outcomes if id(o) not in gone]


async def store_rejection(
    db: Database, part: Part, errors: Sequence[Mapping[str, Any]], window: Window
) -> Tally:
    """A part the API turned away for good: the lines its errors name fail with their error and the rest
    go back to the queue (for new parts); when no error names a line, every line fails with the first."""
    rows = await asyncio.to_thread(lambda: list(parts.part_rows(db, part)))
    by_line = {e["line"]: e for e in errors if isinstance(e.get("line"), int)}
    first = errors[0] if errors else {"code": ErrorType.BATCH_REJECTED, "message": "no reason given"}
    tally = Tally()
    back: list[Outcome] = []
    async with Writer(db, tally.count) as sink:
        writer = _PartWriter(sink, part)
        for number, (request_id, _c, url, _b, attempts) in enumerate(rows, 1):
            error = by_line.get(number) if by_line else first
            if error is None:
                back.append(Outcome(request_id, part.fence, RequestStatus.QUEUED))
                continue
            code = str(error.get("code") or ErrorType.BATCH_REJECTED)
            message = str(error.get("message") or code)
            attempt = window.attempt(Held(request_id, url, attempts), error_type=code, error_message=message)
            writer.put(Outcome(request_id, part.fence, RequestStatus.FAILED, [attempt], None, code, message))
        await writer.join()
    await _requeue(db, part, back, False, tally)
    return tally


def _line(raw: bytes) -> dict[str, Any] | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return line if isinstance(line, dict) and isinstance(line.get("custom_id"), str) else None


def _stamp(value: Any) -> datetime | None:
    """A Unix time of the API as the naive UTC datetime every time column holds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    return None
