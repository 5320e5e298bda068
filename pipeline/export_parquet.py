"""`export --format parquet`: every request with its answer as typed Parquet columns, in constant memory.

The rows are the `jsonl` export's, flattened into typed columns (`COLUMNS`): integers, floats, UTC
timestamps, a list of strings for the finish reasons, and JSON text for the request and response bodies
(kept as stored: a body is any JSON, which no one Parquet type holds). Rows are streamed from the
database (`export.YIELD_PER` at a time) and written in row groups of `GROUP_ROWS`, so memory stays flat
however large the batch. pyarrow is the optional extra `pipeline-bulk[parquet]`.

A new column is one `Column` in `COLUMNS`: its Arrow type, the SQL column it reads and how a value is made.
An embedding vector, for instance, is `pa.list_(pa.float32())` made from the stored JSON's floats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, BinaryIO

from pipeline.errors import ConfigError
from pipeline.store.models import Request, Result, last_latency

#: The column of embedding vectors: a list of float32 lists per row, built from the stored bytes.
EMBEDDINGS = "embeddings"
#: Rows per Parquet row group (and held in memory at once, as Python values then Arrow arrays).
GROUP_ROWS = 20_000


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: Callable[[Any], Any]  #: pyarrow module -> the column's type
    source: Any  #: the SQL column (or expression) it is made from
    make: Callable[[Any], Any] = _same


def _reasons(value: str | None) -> list[str]:
    return value.split("|") if value else []


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _latency(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _columns() -> tuple[Column, ...]:
    return (
        Column("custom_id", lambda pa: pa.string(), Request.custom_id),
        Column("status", lambda pa: pa.string(), Request.status, str),
        Column("endpoint", lambda pa: pa.string(), Request.url),
        Column("line", lambda pa: pa.int64(), Request.line),
        Column("attempts", lambda pa: pa.int32(), Request.attempts),
        Column("request", lambda pa: pa.string(), Request.body),  # JSON text, as sent
        Column("http_status", lambda pa: pa.int32(), Result.http_status),
        Column("x_request_id", lambda pa: pa.string(), Result.x_request_id),
        Column("content_type", lambda pa: pa.string(), Result.content_type),
        Column("response", lambda pa: pa.string(), Result.body),  # as received: JSON text, or a transcript
        Column("model", lambda pa: pa.string(), Result.model),
        Column("finish_reasons", lambda pa: pa.list_(pa.string()), Result.finish_reasons, _reasons),
        Column("output", lambda pa: pa.string(), Result.output),
        Column("prompt_tokens", lambda pa: pa.int64(), Result.prompt_tokens),
        Column("completion_tokens", lambda pa: pa.int64(), Result.completion_tokens),
        Column("total_tokens", lambda pa: pa.int64(), Result.total_tokens),
        Column("audio_seconds", lambda pa: pa.float64(), Result.audio_seconds),
        Column("reasoning_tokens", lambda pa: pa.int64(), Result.reasoning_tokens),
        Column("flagged", lambda pa: pa.bool_(), Result.flagged),  # moderations
        Column("dimensions", lambda pa: pa.int32(), Result.dimensions),  # embeddings: each vector's length
        # embeddings: each input's vector, as stored (float32), in input order; made a row group at a time
        Column(EMBEDDINGS, lambda pa: pa.list_(pa.list_(pa.float32())), Result.vectors),
        Column("error_type", lambda pa: pa.string(), Request.error_type),
        Column("error_message", lambda pa: pa.string(), Request.error_message),
        Column("latency_ms", lambda pa: pa.float64(), last_latency().label("latency_ms"), _latency),
        Column("created_at", lambda pa: pa.timestamp("us", tz="UTC"), Request.created_at, _utc),
        Column("finished_at", lambda pa: pa.timestamp("us", tz="UTC"), Request.finished_at, _utc),
    )


def _vectors(pa: Any, blobs: list[bytes | None], dimensions: list[int | None]) -> Any:
    """The embeddings column of a row group: each row's float32 bytes as a list of `dimensions`-long
    vectors (null for rows without), from one buffer, without a Python float per value."""
    values = pa.py_buffer(b"".join(b for b in blobs if b))
    floats = pa.Array.from_buffers(pa.float32(), len(values) // 4, [None, values])
    inner, outer, mask = [0], [0], []
    for blob, dims in zip(blobs, dimensions, strict=True):
        count = len(blob) // 4 // dims if blob and dims else 0
        start = inner[-1]
        inner.extend(start + (dims or 0) * (k + 1) for k in range(count))
        outer.append(outer[-1] + count)
        mask.append(not blob)
    vectors = pa.ListArray.from_arrays(pa.array(inner, pa.int32()), floats)
    return pa.ListArray.from_arrays(pa.array(outer, pa.int32()), vectors, mask=pa.array(mask, pa.bool_()))


def _table(pa: Any, schema: Any, group: list[Any]) -> Any:
    return pa.Table.from_pydict(dict(zip(schema.names, group, strict=True)), schema=schema)


def require() -> None:
    """ConfigError (one line naming the extra) when pyarrow is not installed."""
    _pyarrow()


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "export --format parquet needs pyarrow: pip install 'pipeline-bulk[parquet]'"
        ) from None
    return pa, pq


def selected() -> tuple[Any, ...]:
    """The SQL columns the export reads, in `COLUMNS` order."""
    return tuple(c.source for c in _columns())


def write_parquet(rows: Iterable[Sequence[Any]], out: BinaryIO) -> int:
    """Write `rows` (selected by `selected()`) to `out` as Parquet, GROUP_ROWS per row group; returns the
    number of rows. ConfigError, before anything is written, when pyarrow is not installed."""
    pa, pq = _pyarrow()
    columns = _columns()
    schema = pa.schema([pa.field(c.name, c.arrow_type(pa)) for c in columns])
    count = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        at, dims = [c.name for c in columns].index(EMBEDDINGS), [c.name for c in columns].index("dimensions")
        for group in _groups(rows):
            count += len(group)
            values: list[Any] = _transposed(columns, group)
            values[at] = _vectors(pa, values[at], values[dims])
            writer.write_table(_table(pa, schema, values))
        if count == 0:
            writer.write_table(_table(pa, schema, [[] for _ in columns]))
    return count


def _groups(rows: Iterable[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    """`rows` in lists of at most GROUP_ROWS."""
    iterator = iter(rows)
    while group := list(islice(iterator, GROUP_ROWS)):
        yield group


def _transposed(columns: Sequence[Column], group: list[Sequence[Any]]) -> list[list[Any]]:
    """A row group as one list per column, each value made by its column (a column at a time: a value at a
    time over 22 columns cost 5x the jsonl export)."""
    return [
        list(values) if c.make is _same else list(map(c.make, values))
        for c, values in zip(columns, zip(*group, strict=True), strict=True)
    ]
