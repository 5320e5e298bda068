"""The lines of a batch input file: checked as the Batch API validates them, then answered one by one.

Validation (every problem is one `errors.data` entry, with the 1-based line it is on; blank lines are
skipped but counted):

    invalid_json_line       the line is not a JSON object
    missing_required_parameter   no string `custom_id`, no object `body`
    invalid_method          `method` is not "POST"
    mismatched_endpoint     `url` is not the batch's endpoint
    duplicate_custom_id     the custom_id was used on an earlier line
    mismatched_model        the body's model differs from the first line's (one model per file)
    max_requests_exceeded   more lines than the batch line limit (no line number)
    too_many_inputs         /v1/embeddings: more than `batch_max_inputs` inputs over all lines (50,000,
                            as OpenAI documents; the code is the fake's, the API's is not documented)
    empty_file              no line at all

Answering reuses the endpoints' own code (`plan_chat`, `plan_embeddings`, ...) and the per-request
directives, so a line whose body says fake:{"status": 400} gets a 400 in the error file. A line is
fingerprinted as a direct request with the same body bytes would be (sha256 of the body as orjson
writes it, which is how pipeline stores bodies) and counts in `stats.bodies` like one.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._chat import plan_chat, plan_completion
from ._embeddings import count_inputs, plan_embeddings
from ._moderations import plan_moderations
from ._plan import Plan
from ._protocol import ApiError
from ._responses import plan_responses
from ._stats import Stats

#: Endpoints a batch can name that the fake answers, and how a body for each is read.
PLANNERS: dict[str, Callable[[bytes, Sequence[str] | None], Plan]] = {
    "/v1/chat/completions": plan_chat,
    "/v1/completions": plan_completion,
    "/v1/embeddings": plan_embeddings,
    "/v1/responses": plan_responses,
    "/v1/moderations": plan_moderations,
}
#: Inputs one /v1/embeddings batch may hold over all its lines.
MAX_EMBEDDING_INPUTS = 50_000
#: Problems listed in errors.data at most.
MAX_ERRORS = 1000
#: What an expired line's error says.
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."

Respond = Callable[[Plan, int], Awaitable[Any]]


@dataclass(frozen=True)
class Line:
    """One valid input line."""

    number: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class Checked:
    """An input file after validation: its lines, its one model, its token estimate, its problems."""

    lines: list[Line] = field(default_factory=list)
    model: str | None = None
    tokens: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def problem(self, code: str, message: str, line: int | None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": None, "line": line})


def check_input(
    data: bytes,
    endpoint: str,
    max_lines: int,
    models: Sequence[str] | None,
    max_inputs: int = MAX_EMBEDDING_INPUTS,
) -> Checked:
    """Validate a batch input file for `endpoint` (one of PLANNERS)."""
    checked = Checked()
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            _check_line(checked, seen, number, raw, endpoint)
    if not seen and not checked.errors:
        checked.problem("empty_file", "The input file has no lines.", None)
    if len(checked.lines) > max_lines:
        checked.problem(
            "max_requests_exceeded",
            f"The input file has {len(checked.lines)} requests; a batch takes at most {max_lines}.",
            None,
        )
    if endpoint == "/v1/embeddings":
        inputs = sum(count_inputs(line.body.get("input")) for line in checked.lines)
        if inputs > max_inputs:
            message = f"The input file has {inputs} embedding inputs; a batch takes at most {max_inputs}."
            checked.problem("too_many_inputs", message, None)
    plan = PLANNERS[endpoint]
    checked.tokens = sum(plan(orjson.dumps(line.body), models).tokens for line in checked.lines)
    return checked


def _check_line(checked: Checked, seen: dict[str, int], number: int, raw: bytes, endpoint: str) -> None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        line = None
    if not isinstance(line, dict):
        return checked.problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    custom_id, body = line.get("custom_id"), line.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return checked.problem(
            "missing_required_parameter", "Missing required parameter: 'custom_id'.", number
        )
    if not isinstance(body, dict):
        return checked.problem("missing_required_parameter", "Missing required parameter: 'body'.", number)
    if line.get("method") != "POST":
        return checked.problem("invalid_method", "Invalid value for 'method': expected 'POST'.", number)
    if line.get("url") != endpoint:
        message = f"The url {line.get('url')!r} does not match the batch's endpoint {endpoint!r}."
        return checked.problem("mismatched_endpoint", message, number)
    if custom_id in seen:
        message = f"The custom_id {custom_id!r} is already used on line {seen[custom_id]}."
        return checked.problem("duplicate_custom_id", message, number)
    seen[custom_id] = number
    model = body.get("model")
    if checked.model is None and isinstance(model, str):
        checked.model = model
    elif model != checked.model:
        message = f"The model {model!r} differs from {checked.model!r}: a batch takes one model."
        return checked.problem("mismatched_model", message, number)
    checked.lines.append(Line(number, custom_id, body))


async def answer_line(
    line: Line, endpoint: str, models: Sequence[str] | None, stats: Stats, respond: Respond
) -> dict[str, Any]:
    """The output (or error) file line answering `line`, as a direct request with its body is answered."""
    plan = PLANNERS[endpoint](orjson.dumps(line.body), models)
    receipt = stats.receive(plan.fingerprint)
    tokens = None
    try:
        answer = await respond(plan, receipt)
        status, body, request_id = 200, _body(answer.body), answer.headers.get("x-request-id")
        tokens = answer.tokens
    except ApiError as error:
        status, body, request_id = error.status, error.body(), error.headers.get("x-request-id")
    stats.answer_line(plan.fingerprint, status, tokens)
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": line.custom_id,
        "response": {
            "status_code": status,
            "request_id": request_id or f"req_{secrets.token_hex(16)}",
            "body": body,
        },
        "error": None,
    }


def expired_line(line: Line) -> dict[str, Any]:
    """The error file line of a request the batch never got to."""
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE},
    }


def _body(raw: bytes) -> Any:
    """An answer body as the output line carries it: its JSON, or (a directed bad body) its text."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
