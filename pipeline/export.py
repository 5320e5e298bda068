"""Exporting a batch: every request with its result, as CSV, JSON lines, or OpenAI Batch API output lines.

One SELECT of requests LEFT OUTER JOIN results ordered by requests.id, with the latency of the last attempt
(the highest `number`) as a correlated scalar subquery, one probe of the `attempts.request_id` index per row.
Rows are streamed `YIELD_PER` at a time and written as they arrive: memory stays flat however large the
batch. Each format selects only the columns it writes, and unpacks rows by position: attribute access on a
Row costs about a microsecond per column, which doubled the time of a 1M-row export.

- `csv`: one row per request, `CSV_COLUMNS`, RFC 4180 quoting, empty cells for missing values. Embedding
  vectors are not in it (a row of 16 vectors of 1,536 floats is ~0.5 MB of text): `dimensions` says their
  length; `jsonl` and `openai` carry them. A text cell a spreadsheet would run as a formula (it starts
  with =, +, -, @, a tab or a carriage return: OWASP's "CSV Injection") gets a leading single quote, unless
  it is a plain number such as `-1` (`neutralise`); `csv_raw` writes cells as stored. Custom ids come from
  job files and outputs from models: both may carry what someone else wants a spreadsheet to run.
- `jsonl`: one object per request with the request body and response body parsed, usage, finish reasons,
  output, error and latency, plus what its endpoint adds (`export_fields`: embeddings' vectors as lists
  of floats, a moderation's `flagged`).
- `openai`: the Batch API's output file format, so tools written for it read ours unchanged. Only final
  requests appear (queued and running ones are skipped and not counted).

Response bodies are exported as the API sent them: what an endpoint stored apart (embedding vectors) is put
back by the endpoint (`restore`), base64 as base64, floats as the same floats.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import orjson
from sqlalchemy import ColumnElement, Select, case, select
from sqlalchemy.orm import InstrumentedAttribute

from pipeline.endpoints import BY_URL
from pipeline.errors import BatchNotFound, ConfigError, ErrorType
from pipeline.ids import openai_request_id
from pipeline.store.db import Database
from pipeline.store.models import (
    FINAL_STATUSES,
    Batch,
    Request,
    RequestStatus,
    Result,
    last_latency,
)

__all__ = ["CSV_COLUMNS", "FORMATS", "export_batch", "iter_records", "records_of"]

#: Export formats, as the CLI offers them (parquet: export_parquet.py, with pyarrow).
FORMATS = ("csv", "jsonl", "openai", "parquet")

#: Columns of the CSV export, in order.
CSV_COLUMNS = (
    "custom_id",
    "endpoint",
    "model",
    "status",
    "http_status",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "output",
    "error_type",
    "error_message",
    "attempts",
    "latency_ms",
    "reasoning_tokens",
    "flagged",
    "dimensions",
)

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = frozenset("=+-@\t\r")

#: Text that is a plain decimal number: a spreadsheet reads it as that number, never as a formula.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

#: Rows fetched from the database per round trip (and held in memory at once).
YIELD_PER = 2000

_Column = ColumnElement[Any] | InstrumentedAttribute[Any]
_Writer = Callable[[Iterable[Sequence[Any]], BinaryIO], int]


def export_batch(
    db: Database,
    batch_id: str,
    fmt: str,
    out: BinaryIO,
    on_progress: Callable[[int], None] | None = None,
    *,
    csv_raw: bool = False,
) -> int:
    """Write every request of the batch to `out` (binary stream) in `fmt`; return the number of records.

    `out` is left open. `on_progress(rows read)` is called every YIELD_PER rows. Raises `ConfigError` for
    an unknown format and `BatchNotFound` for an unknown batch. `csv_raw`: CSV cells exactly as stored,
    formulas included (see the module docstring).
    """
    columns: tuple[_Column, ...]
    writer: _Writer
    if fmt == "parquet":
        from pipeline import export_parquet  # pyarrow is loaded for this format only

        export_parquet.require()
        columns, writer = export_parquet.selected(), export_parquet.write_parquet
    elif fmt not in _FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    else:
        columns, writer = _FORMATS[fmt]
        if fmt == "csv" and csv_raw:
            writer = _write_csv_raw
    with db.read() as session:
        if session.get(Batch, batch_id) is None:
            raise BatchNotFound(f"no batch {batch_id!r}")
        stmt = _statement(batch_id, columns).execution_options(yield_per=YIELD_PER, stream_results=True)
        # On the session's connection, as Core: the ORM's per-row loading adds nothing for plain columns.
        rows = session.connection().execute(stmt)
        try:
            return writer(rows if on_progress is None else _counted(rows, on_progress), out)
        finally:
            rows.close()


def _counted(rows: Iterable[Sequence[Any]], on_progress: Callable[[int], None]) -> Iterator[Sequence[Any]]:
    """`rows`, calling `on_progress(rows so far)` every YIELD_PER rows."""
    for count, row in enumerate(rows, 1):
        if count % YIELD_PER == 0:
            on_progress(count)
        yield row


def _statement(batch_id: str, columns: tuple[_Column, ...]) -> Select[Any]:
    return _statement_of(columns).where(Request.batch_id == batch_id)


def _statement_of(columns: tuple[_Column, ...]) -> Select[Any]:
    return (
        select(*columns)
        .select_from(Request)
        .outerjoin(Result, Result.request_id == Request.id)
        .order_by(Request.id)
    )


def _latency(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- csv -----------------------------------------------------------------------------------------------

_CSV_SELECT: tuple[_Column, ...] = (
    Request.custom_id,
    Request.url,
    Result.model,
    Request.status,
    Result.http_status,
    Result.finish_reasons,
    Result.prompt_tokens,
    Result.completion_tokens,
    Result.total_tokens,
    Result.output,
    Request.error_type,
    Request.error_message,
    Request.attempts,
    last_latency().label("latency_ms"),
    Result.reasoning_tokens,
    case((Result.flagged.is_(True), "true"), (Result.flagged.is_(False), "false")).label("flagged"),
    Result.dimensions,
)
_CSV_LATENCY = CSV_COLUMNS.index("latency_ms")


def neutralise(cell: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, with a leading single quote; any other cell (a
    number, text that is a plain number such as `-1`, ordinary text) as it is."""
    if isinstance(cell, str) and cell[:1] in FORMULA_STARTS and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _write_csv(rows: Iterable[Sequence[Any]], out: BinaryIO) -> int:
    return _csv(rows, out, safe=True)


def _write_csv_raw(rows: Iterable[Sequence[Any]], out: BinaryIO) -> int:
    return _csv(rows, out, safe=False)


def _csv(rows: Iterable[Sequence[Any]], out: BinaryIO, safe: bool) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        writer = csv.writer(text)
        writer.writerow(CSV_COLUMNS)
        count = 0
        for row in rows:
            # Columns are selected in CSV_COLUMNS order; only the latency needs rounding.
            cells = list(row)
            cells[_CSV_LATENCY] = _latency(cells[_CSV_LATENCY])
            if safe:  # the cheap test first: most cells start with a letter or a digit
                cells = [
                    neutralise(c) if isinstance(c, str) and c[:1] in FORMULA_STARTS else c for c in cells
                ]
            writer.writerow(cells)
            count += 1
        text.flush()
    finally:
        text.detach()  # leave the caller's stream open
    return count


# --- parsing stored bodies -----------------------------------------------------------------------------


def _parse_json(text: str) -> Any:
    """`text` parsed as JSON, or `text` itself when it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _response_body(body: str, content_type: str | None) -> Any:
    """A stored response body, parsed when it is JSON: srt, vtt and text transcripts stay text."""
    if content_type is None or "json" in content_type.lower():
        return _parse_json(body)
    return body


def _response(
    http_status: int | None,
    x_request_id: str | None,
    content_type: str | None,
    body: str | None,
    url: str,
    vectors: bytes | None,
    dimensions: int | None,
) -> dict[str, Any] | None:
    """The answer as the Batch API shows it, its body as the API sent it (vectors put back)."""
    if http_status is None or body is None:  # no result row (results.http_status is NOT NULL)
        return None
    parsed = _response_body(body, content_type)
    endpoint = BY_URL.get(url)
    if vectors is not None and endpoint is not None:
        parsed = endpoint.restore(parsed, vectors, dimensions)
    return {"status_code": http_status, "request_id": x_request_id, "body": parsed}


# --- jsonl ---------------------------------------------------------------------------------------------

_JSONL_SELECT: tuple[_Column, ...] = (
    Request.custom_id,
    Request.status,
    Request.url,
    Request.attempts,
    Request.body,
    Request.error_type,
    Request.error_message,
    Result.http_status,
    Result.x_request_id,
    Result.content_type,
    Result.body,
    Result.finish_reasons,
    Result.output,
    Result.prompt_tokens,
    Result.completion_tokens,
    Result.total_tokens,
    Result.audio_seconds,
    last_latency().label("latency_ms"),
    Result.flagged,
    Result.dimensions,
    Result.vectors,
)


def _write_jsonl(rows: Iterable[Sequence[Any]], out: BinaryIO) -> int:
    count = 0
    for record in _jsonl_records(rows):
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _jsonl_records(rows: Iterable[Sequence[Any]]) -> Iterator[dict[str, Any]]:
    for (
        custom_id,
        status,
        url,
        attempts,
        request_body,
        error_type,
        error_message,
        http_status,
        x_request_id,
        content_type,
        body,
        finish_reasons,
        output,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        audio_seconds,
        latency_ms,
        flagged,
        dimensions,
        vectors,
    ) in rows:
        response = _response(http_status, x_request_id, content_type, body, url, vectors, dimensions)
        record = {
            "custom_id": custom_id,
            "status": str(status),
            "endpoint": url,
            "attempts": attempts,
            "request": _parse_json(request_body),
            "response": response,
            "usage": _usage(prompt_tokens, completion_tokens, total_tokens, audio_seconds),
            "finish_reasons": finish_reasons.split("|") if finish_reasons else [],
            "output": output,
            "error": _error(error_type, error_message),
            "latency_ms": _latency(latency_ms),
        }
        endpoint = BY_URL.get(url)
        if endpoint is not None:
            answer = response["body"] if response is not None else None
            record.update(endpoint.export_fields(answer, vectors, dimensions, flagged))
        yield record


def iter_records(db: Database, batch_id: str) -> Iterator[dict[str, Any]]:
    """The batch's requests with their answers as the `jsonl` export's objects, streamed in id order."""
    with db.read() as session:
        stmt = _statement(batch_id, _JSONL_SELECT).execution_options(yield_per=YIELD_PER, stream_results=True)
        rows = session.connection().execute(stmt)
        try:
            yield from _jsonl_records(rows)
        finally:
            rows.close()


def records_of(db: Database, request_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The `jsonl` export's objects of these requests, in id order (the Python API's results as stored)."""
    if not request_ids:
        return []
    stmt = _statement_of(_JSONL_SELECT).where(Request.id.in_(list(request_ids)))
    with db.read() as session:
        return list(_jsonl_records(session.connection().execute(stmt)))


def _usage(
    prompt: int | None, completion: int | None, total: int | None, seconds: float | None
) -> dict[str, str | float | None] | None:
    """Token usage; for audio billed by duration (whisper-1), `{"type": "duration", "seconds": N}`."""
    if prompt is None and completion is None and total is None:
        return None if seconds is None else {"type": "duration", "seconds": seconds}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _error(error_type: str | None, message: str | None) -> dict[str, str | None] | None:
    if error_type is None and message is None:
        return None
    return {"type": error_type, "message": message}


# --- openai --------------------------------------------------------------------------------------------

_OPENAI_SELECT: tuple[_Column, ...] = (
    Request.id,
    Request.custom_id,
    Request.status,
    Request.error_type,
    Request.error_message,
    Result.http_status,
    Result.x_request_id,
    Result.content_type,
    Result.body,
    Request.url,
    Result.vectors,
    Result.dimensions,
)


def _openai_error(status: str, error_type: str | None, message: str | None) -> dict[str, str | None]:
    if status == RequestStatus.CANCELLED:
        return {"code": ErrorType.CANCELLED, "message": message or "cancelled before it was sent"}
    return {"code": error_type or status, "message": message}


def _write_openai(rows: Iterable[Sequence[Any]], out: BinaryIO) -> int:
    count = 0
    for request_id, custom_id, status, error_type, error_message, *result in rows:
        if status not in FINAL_STATUSES:  # queued or running: no outcome yet
            continue
        # Any HTTP answer, error statuses included, is a `response` with `error: null`, as the Batch API
        # reports it; `error` is for requests that never got one (timeouts, connection errors, cancelled).
        response = _response(*result)
        record = {
            "id": openai_request_id(request_id),
            "custom_id": custom_id,
            "response": response,
            "error": None if response is not None else _openai_error(status, error_type, error_message),
        }
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


_FORMATS: dict[str, tuple[tuple[_Column, ...], _Writer]] = {
    "csv": (_CSV_SELECT, _write_csv),
    "jsonl": (_JSONL_SELECT, _write_jsonl),
    "openai": (_OPENAI_SELECT, _write_openai),
}
