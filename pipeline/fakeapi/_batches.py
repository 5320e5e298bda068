"""/v1/batches: create, list, retrieve and cancel, and the life of a batch in a background task.

A batch is created `validating`; its input file is then checked (_batch_lines.py). Problems fail it
(`failed`, every problem in `errors.data`); so does the enqueued token limit (`token_limit_exceeded`,
when the batches of its model in progress plus this one would pass `batch_token_limit`). Otherwise it is
`in_progress` for `batch_seconds`, then `finalizing` while every line is answered (a share
`batch_expire_rate` expires instead), then `completed`, or `expired` when any line expired. Successful
answers go to the output file, HTTP errors and expired lines to the error file, each shuffled (the API
keeps no order). `request_counts` counts lines: completed (2xx) and failed (the rest).

A cancel while `validating` or `in_progress` makes it `cancelling`, then `cancelled` with no line
answered; a cancel of a `cancelling` batch changes nothing; of any other status it is refused 400.
Creating checks at once what OpenAI refuses at once: an unknown input file (404), a purpose other than
batch, an input file over `batch_max_bytes` ("File is too large."), an endpoint the fake does not answer
in batches (it answers chat, legacy completions, embeddings, responses and moderations), a completion
window other than "24h", and metadata beyond 16 string pairs (keys up
to 64 characters, values up to 512).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ._batch_lines import PLANNERS, Checked, Respond, answer_line, check_input, expired_line
from ._config import FakeConfig
from ._files import FileStore, json_response, list_limit, no_such
from ._protocol import ApiError, invalid_type, missing_parameter
from ._stats import Stats

#: The statuses a batch never leaves.
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: The statuses whose tokens count towards the enqueued token limit.
ENQUEUED = frozenset({"in_progress", "finalizing"})
#: Seconds in the only completion window there is.
WINDOW_SECONDS = 24 * 3600
#: Most batches one list call returns.
MAX_LIST = 100


@dataclass
class FakeBatch:
    """One batch and where it stands."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    model: str | None = None
    tokens: int = 0
    times: dict[str, int | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    #: the processing time and expiry share in force when it was created (a later config change is for
    #: later batches)
    seconds: float = 0.0
    expire_rate: float = 0.0

    def view(self) -> dict[str, Any]:
        """The batch object, as OpenAI shows it."""
        stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + WINDOW_SECONDS,
            **{f"{name}_at": self.times.get(name) for name in stamps},
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }

    def move(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())


class BatchStore:
    """Every batch created, in order, and the tasks that run them."""

    def __init__(
        self, config: FakeConfig, stats: Stats, rng: random.Random, files: FileStore, respond: Respond
    ) -> None:
        self.config = config
        self.stats = stats
        self.random = rng
        self.files = files
        self.respond = respond
        self.batches: dict[str, FakeBatch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, request: web.Request) -> web.Response:
        """POST /v1/batches {input_file_id, endpoint, completion_window, metadata}."""
        body = await _json_object(request)
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if not isinstance(file_id, str):
            raise missing_parameter("input_file_id")
        if endpoint not in PLANNERS:
            raise ApiError(400, f"Invalid 'endpoint': {endpoint!r} is not supported.", param="endpoint")
        if body.get("completion_window") != "24h":
            raise ApiError(
                400, "Invalid 'completion_window': only '24h' is supported.", param="completion_window"
            )
        metadata = _metadata(body.get("metadata"))
        source = self.files.get(file_id)
        if source.purpose != "batch":
            raise ApiError(
                400, f"File {file_id} was not uploaded with purpose 'batch'.", param="input_file_id"
            )
        if len(source.data) > self.config.batch_max_bytes:
            raise ApiError(400, "File is too large.", param="input_file_id")
        batch = FakeBatch(f"batch_{secrets.token_hex(12)}", endpoint, file_id, metadata, int(time.time()))
        batch.seconds, batch.expire_rate = self.config.batch_seconds, self.config.batch_expire_rate
        self.batches[batch.id] = batch
        self.stats.created(batch.id, metadata)
        task = asyncio.get_running_loop().create_task(self._run(batch, source.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return json_response(batch.view())

    async def listing(self, request: web.Request) -> web.Response:
        """GET /v1/batches?limit=&after=: newest first."""
        limit = list_limit(request.query.get("limit"), 20, MAX_LIST)
        batches = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        return json_response(
            {
                "object": "list",
                "data": [b.view() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(batches) > limit,
            }
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        """GET /v1/batches/{id}."""
        return json_response(self._get(request.match_info["id"]).view())

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """POST /v1/batches/{id}/cancel."""
        batch = self._get(request.match_info["id"])
        if batch.status in ("validating", "in_progress"):
            batch.move("cancelling")
            batch.cancel.set()
            self.stats.cancelled(batch.id)
        elif batch.status != "cancelling":
            raise ApiError(400, f"Cannot cancel a batch with status '{batch.status}'.")
        return json_response(batch.view())

    def _get(self, batch_id: str) -> FakeBatch:
        found = self.batches.get(batch_id)
        if found is None:
            raise no_such("Batch", batch_id)
        return found

    async def _run(self, batch: FakeBatch, data: bytes) -> None:
        await asyncio.sleep(0)  # answer the create call first, as `validating`
        config = self.config
        checked = check_input(
            data, batch.endpoint, config.batch_max_lines, config.models, config.batch_max_inputs
        )
        batch.model, batch.tokens = checked.model, checked.tokens
        if not checked.errors:
            self._check_enqueued(batch, checked)
        if checked.errors:
            batch.errors = checked.errors
            batch.move("failed")
            return
        batch.counts["total"] = len(checked.lines)
        if batch.cancel.is_set():  # cancelled while validating
            batch.move("cancelled")
            return
        batch.move("in_progress")
        try:
            await asyncio.wait_for(batch.cancel.wait(), batch.seconds)
        except TimeoutError:
            pass
        if batch.cancel.is_set():
            batch.move("cancelled")
            return
        batch.move("finalizing")
        await self._answer(batch, checked)

    def _check_enqueued(self, batch: FakeBatch, checked: Checked) -> None:
        limit = self.config.batch_token_limit
        if limit is None:
            return
        enqueued = sum(
            b.tokens for b in self.batches.values() if b.model == batch.model and b.status in ENQUEUED
        )
        if enqueued + batch.tokens > limit:
            checked.problem(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {batch.model} in organization org-fake. Limit: {limit:,} "
                "enqueued tokens. Please try again once some in_progress batches have been completed.",
                None,
            )

    async def _answer(self, batch: FakeBatch, checked: Checked) -> None:
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        expired = False
        for line in checked.lines:
            if self.random.random() < batch.expire_rate:
                self.stats.expire_line()
                errors.append(expired_line(line))
                expired = True
                continue
            answered = await answer_line(line, batch.endpoint, self.config.models, self.stats, self.respond)
            ok = 200 <= answered["response"]["status_code"] < 300
            (outputs if ok else errors).append(answered)
        batch.counts.update(completed=len(outputs), failed=len(errors))
        batch.output_file_id = self._write(batch, "output", outputs)
        batch.error_file_id = self._write(batch, "error", errors)
        batch.move("expired" if expired else "completed")

    def _write(self, batch: FakeBatch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        self.random.shuffle(lines)
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return self.files.add(f"{batch.id}_{kind}.jsonl", f"batch_{kind}", data).id


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request.")
    return body


def _metadata(value: Any) -> dict[str, str] | None:
    """Batch metadata as OpenAI checks it: up to 16 string pairs, keys up to 64, values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("metadata", "an object", value)
    if len(value) > 16:
        raise ApiError(400, "Invalid 'metadata': at most 16 pairs.", param="metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key[:64]}': keys up to 64 characters, string values up to 512.",
                param="metadata",
            )
    return dict(value)
