"""Cutting a batch's queued rows into parts the Batch API accepts, and writing a part's input file.

A part has one endpoint and one model, at most `part_size` lines and `part_bytes` bytes of input file, and
at most its endpoint's `max_batch_inputs` (the API's 50,000 embedding inputs per batch); a single line
larger than that is a part of its own: the API judges it. Rows are read in id order a
page at a time, so memory holds the ids of one open part per (endpoint, model), never the bodies of the
batch. Rows of an endpoint the Batch API does not take (audio) are marked to be sent directly (intake
refused them unless --audio-direct asked for that).

The input file is the rows' Batch API lines in id order, each body exactly as stored: the same rows
always make the same bytes, so its line numbers name rows when the API reports problems by line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from pipeline.batchapi.options import BatchApiOptions
from pipeline.endpoints import BY_URL, Endpoint
from pipeline.ids import new_part_id
from pipeline.store import parts
from pipeline.store.db import Database
from pipeline.store.models import Batch, Part

#: Queued rows read per query while planning.
PAGE = 10_000


@dataclass
class _Open:
    """A part being filled."""

    #: the model its rows are for
    model: str
    ids: list[int] = field(default_factory=list)
    size: int = 0
    #: what its rows count against their endpoint's `max_batch_inputs` (embedding inputs)
    inputs: int = 0

    def full(self, options: BatchApiOptions, endpoint: Endpoint, size: int, inputs: int) -> bool:
        """Whether a row of `size` bytes and `inputs` inputs would take it over a limit."""
        limit = endpoint.max_batch_inputs
        return (
            len(self.ids) >= options.part_size
            or self.size + size > options.part_bytes
            or (limit is not None and self.inputs + inputs > limit)
        )


def input_line(custom_id: str, url: str, body: str) -> bytes:
    """One line of a part's input file: the request as the Batch API takes it, its body as stored."""
    return (
        b'{"custom_id":'
        + orjson.dumps(custom_id)
        + b',"method":"POST","url":'
        + orjson.dumps(url)
        + b',"body":'
        + body.encode()
        + b"}\n"
    )


def _read(endpoint: Endpoint, body: str) -> tuple[str, str, int]:
    """Of a stored body: the `model` it names ("" for none: the Batch API compares the field itself, so a
    body without one goes in a part of its own), the model it is for (`model_of`: its usage counters) and
    its inputs against the endpoint's per-batch limit."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", "", 1
    if not isinstance(data, dict):
        return "", "", 1
    named = data.get("model")
    return named if isinstance(named, str) else "", endpoint.model_of(data), endpoint.batch_inputs(data)


def plan_parts(db: Database, batch: Batch) -> list[Part]:
    """Make parts of the batch's queued rows that no part holds (nothing when none or not active)."""
    options = BatchApiOptions.of(batch.options)
    filling: dict[tuple[str, str], _Open] = {}
    made: list[Part] = []
    audio: list[int] = []
    for request_id, custom_id, url, body in _queued(db, batch.id):
        endpoint = BY_URL[url]
        if not endpoint.batch_api:
            audio.append(request_id)
            continue
        named, model, inputs = _read(endpoint, body)
        key = (url, named)
        size = len(input_line(custom_id, url, body))
        current = filling.setdefault(key, _Open(model))
        if current.ids and current.full(options, endpoint, size, inputs):
            made += _make(db, batch.id, url, current)
            current = filling[key] = _Open(model)
        current.ids.append(request_id)
        current.size += size
        current.inputs += inputs
    for (url, _), current in filling.items():
        made += _make(db, batch.id, url, current)
    if audio:
        parts.mark_direct(db, audio)
    return made


def _queued(db: Database, batch_id: str) -> Iterator[tuple[int, str, str, str]]:
    after = 0
    while True:
        rows = parts.plannable_rows(db, batch_id, after, PAGE)
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def _make(db: Database, batch_id: str, url: str, current: _Open) -> list[Part]:
    part = parts.new_part(db, new_part_id(), batch_id, url, current.model, current.ids)
    return [part] if part is not None else []


def write_input(db: Database, part: Part, out: IO[bytes]) -> list[int]:
    """Write the part's input file to `out`; the ids of its rows, in line order."""
    ids: list[int] = []
    for request_id, custom_id, url, body, _attempts in parts.part_rows(db, part):
        out.write(input_line(custom_id, url, body))
        ids.append(request_id)
    return ids


def input_filename(part: Part) -> str:
    """The name a part's input file is uploaded under: found again by it after a crash."""
    return f"pipeline-{part.batch_id}-{part.id}.jsonl"
