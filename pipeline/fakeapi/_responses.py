"""POST /v1/responses: the Responses API, answered with deterministic text.

The answer echoes the prompt: one `message` output item whose `output_text` is "echo: " + the text of the
last user message (of `input` itself when it is a string). A tool choice that forces a function
(`{"type": "function", "name"}`, or "required" with a function tool) answers one `function_call` item
whose arguments are {"echo": <that text>} instead. A request with `reasoning` (reasoning models) spends
REASONING_FACTOR times the answer's tokens reasoning first, and its output starts with a `reasoning` item.

Tokens are counted as the fake counts them (ceil(characters / 4)): input = instructions + every input
item's text; output = reasoning + answer. With `max_output_tokens` below that, the response is
`incomplete` with `incomplete_details.reason` "max_output_tokens": the reasoning is spent first, the text
is cut to what is left (4 characters a token), and output_tokens is max_output_tokens. The TPM estimate is
input + (max_output_tokens, else the output).

Refused, with OpenAI's errors: a missing model or input, an input that is neither a string nor an array, an
item that is not an object, `max_output_tokens` below 16, `previous_response_id` (the fake stores no
response: 400 previous_response_not_found), `stream`, an unknown model. A directive (_directives.py) in
the last user message (or a string input) sets the model and the text as for chat.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._chat import load_object, model_of, text_of
from ._directives import Directive, directive_in
from ._plan import Plan
from ._protocol import (
    Answer,
    ApiError,
    check_model_exists,
    count_tokens,
    fingerprint_bytes,
    int_param,
    invalid_type,
    missing_parameter,
    reject_stream,
    require_model,
)

#: Reasoning tokens spent per answer token when the request asks for `reasoning`.
REASONING_FACTOR = 2
#: The smallest `max_output_tokens` OpenAI accepts.
MIN_OUTPUT_TOKENS = 16


@dataclass(frozen=True)
class _Request:
    """A valid request, as the answer needs it."""

    body: dict[str, Any]
    model: str
    input_tokens: int
    prompt: str  #: the text echoed
    limit: int | None
    call: str | None  #: the function a tool choice forces
    reasons: bool


def plan_responses(raw: bytes, models: Sequence[str] | None) -> Plan:
    fingerprint = fingerprint_bytes(raw)
    try:
        request = _read(load_object(raw))
        directive = directive_in(request.prompt)
        check_model_exists(request.model, models)
    except ApiError as error:
        return Plan.failing(fingerprint, error, model_of(raw))
    natural = _answer_tokens(request, f"echo: {request.prompt}")
    tokens = request.input_tokens + (request.limit if request.limit is not None else natural)

    def respond(directed: Directive | None) -> Answer:
        return Answer.json(_response(request, directed))

    return Plan(fingerprint, request.model, tokens, respond, directive=directive)


def _read(body: dict[str, Any]) -> _Request:
    model = require_model(body.get("model"))
    value = body.get("input")
    if value is None:
        raise missing_parameter("input")
    if isinstance(value, str):
        items: list[Any] = [{"role": "user", "content": value}]
    elif isinstance(value, list):
        items = value
    else:
        raise invalid_type("input", "a string or an array", value)
    tokens, prompt = _read_items(items)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        tokens += count_tokens(instructions)
    limit = int_param(body, "max_output_tokens", low=MIN_OUTPUT_TOKENS)
    previous = body.get("previous_response_id")
    if previous is not None:
        raise ApiError(
            400,
            f"Previous response with id '{previous}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    reject_stream(body)
    return _Request(body, model, tokens, prompt, limit, _forced_call(body), body.get("reasoning") is not None)


def _read_items(items: list[Any]) -> tuple[int, str]:
    """(input tokens, text of the last user message) of the input items."""
    tokens, prompt = 0, ""
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{index}]", "an object", item)
        text = text_of(item.get("content", item.get("output", "")))
        tokens += count_tokens(text)
        if item.get("role") == "user":
            prompt = text
    return tokens, prompt


def _forced_call(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if choice == "required":
        for tool in body.get("tools") or []:
            if (
                isinstance(tool, dict)
                and tool.get("type") == "function"
                and isinstance(tool.get("name"), str)
            ):
                return str(tool["name"])
    return None


def _answer_tokens(request: _Request, text: str) -> int:
    answer = count_tokens(_arguments(text) if request.call else text)
    return answer * (1 + REASONING_FACTOR) if request.reasons else answer


def _arguments(text: str) -> str:
    return orjson.dumps({"echo": text.removeprefix("echo: ")}).decode()


def _response(request: _Request, directive: Directive | None) -> dict[str, Any]:
    text = f"echo: {request.prompt}"
    directed = directive is not None and directive.shapes_text
    if directive is not None and directive.shapes_text:
        text = directive.text(text)
    answer = count_tokens(_arguments(text) if request.call else text)
    reasoning = REASONING_FACTOR * answer if request.reasons else 0
    limit, incomplete = request.limit, False
    if limit is not None and reasoning + answer > limit and not directed:  # directed text is never cut
        incomplete = True
        reasoning = min(reasoning, limit)
        answer = limit - reasoning
        text = text[: answer * 4]
    output: list[dict[str, Any]] = []
    if request.reasons:
        output.append({"id": f"rs_{secrets.token_hex(16)}", "type": "reasoning", "summary": []})
    if answer > 0 or not incomplete:
        output.append(_call(request.call, text) if request.call else _message(text, incomplete))
    model = directive.model if directive is not None and directive.model is not None else request.model
    return _body(request, model, output, incomplete, reasoning + answer, reasoning)


def _message(text: str, incomplete: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{secrets.token_hex(16)}",
        "type": "message",
        "status": "incomplete" if incomplete else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call(name: str, text: str) -> dict[str, Any]:
    return {
        "id": f"fc_{secrets.token_hex(16)}",
        "type": "function_call",
        "status": "completed",
        "call_id": f"call_{secrets.token_hex(12)}",
        "name": name,
        "arguments": _arguments(text),
    }


def _body(
    request: _Request, model: str, output: list[dict[str, Any]], incomplete: bool, spent: int, reasoning: int
) -> dict[str, Any]:
    body = request.body
    return {
        "id": f"resp_{secrets.token_hex(24)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": request.limit,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": request.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": spent,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": request.input_tokens + spent,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
