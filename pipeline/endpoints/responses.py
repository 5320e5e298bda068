"""POST /v1/responses: the Responses API, where OpenAI puts its newest models and tools.

Every body parameter passes through (input items, instructions, tools, `text.format`, reasoning,
`max_output_tokens`, metadata, ...). Refused, since rows of a job file are sent in no order and each stored
whole: `previous_response_id` and `conversation` (a row would depend on another row's answer, or add to a
conversation other rows add to), `stream`, and `background` (the answer would be a queued response to poll
later, not the response).

Answers (platform.openai.com/docs/api-reference/responses/object): `status` `completed`, or `incomplete`
with `incomplete_details.reason` as the finish reason (`max_output_tokens` is a result, never paid for
twice, as chat's `length`); any other status (failed, queued, ...) is no answer and is retried. The output
is the text of the `output_text` parts of its messages (a refusal when there is no text), else its
function calls as JSON. Usage: `input_tokens` (with `input_tokens_details.cached_tokens`), `output_tokens`
(reasoning tokens included, `output_tokens_details.reasoning_tokens`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import orjson

from pipeline.endpoints.base import Body, Endpoint, Parsed, as_str, lacks, usage_tokens
from pipeline.endpoints.checks import check_counts, check_stream, check_string, json_type
from pipeline.send.tokens import TOKENS_PER_MESSAGE

#: Statuses of a response that is an answer.
ANSWERED: frozenset[str] = frozenset({"completed", "incomplete"})
#: Parameters that tie a row to other rows' answers.
_STATEFUL = {
    "previous_response_id": "a row may not build on another answer (rows are sent in no order); "
    "put the earlier turns in `input`",
    "conversation": "rows would add to one conversation in no order; put the earlier turns in `input`",
}


class Responses(Endpoint):
    """The Responses API."""

    #: Azure serves responses at /openai/responses?api-version=, the deployment in `model`
    azure: ClassVar[str] = "resource"

    def validate(self, body: Body, base_dir: Path) -> str | None:
        return (
            check_string(body, "model")
            or _check_input(body)
            or _check_instructions(body)
            or check_counts(body, ("max_output_tokens",))
            or _check_stateless(body)
            or check_stream(body)
        )

    def prompt_texts(self, body: Body) -> list[str]:
        texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
        value = body.get("input")
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts += [_item_text(item) for item in value]
        if body.get("tools"):
            texts.append(str(body["tools"]))
        return texts

    def prompt_overhead(self, body: Body) -> int:
        return TOKENS_PER_MESSAGE * self.messages(body)

    def messages(self, body: Body) -> int:
        value = body.get("input")
        return len(value) if isinstance(value, list) else 1

    def completion_cap(self, body: Body) -> int | None:
        limit = body.get("max_output_tokens")
        return limit if isinstance(limit, int) and limit > 0 else None

    def parse(self, data: dict[str, Any]) -> Parsed | str:
        output, status = data.get("output"), data.get("status")
        if not (isinstance(output, list) and isinstance(status, str)):
            return lacks(data, "output")
        if status not in ANSWERED:
            return f"a response with status {status!r}"
        details = data.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        prompt, completion, total, cached, reasoning = usage_tokens(usage)
        return Parsed(
            response_id=as_str(data.get("id")),
            model=as_str(data.get("model")),
            finish_reasons=reason if status == "incomplete" and isinstance(reason, str) else status,
            output=output_of([item for item in output if isinstance(item, dict)]),
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
        )


def output_of(items: list[dict[str, Any]]) -> str | None:
    """The response's text (its messages' `output_text` parts, joined), else its refusal, else its function
    calls as JSON; None when it has none of them."""
    texts, refusals = [], []
    for item in items:
        if item.get("type") == "message" and isinstance(item.get("content"), list):
            for part in item["content"]:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
    if texts or refusals:
        return "".join(texts) if texts else "".join(refusals)
    calls = [item for item in items if item.get("type") == "function_call"]
    return orjson.dumps(calls).decode() if calls else None


def _check_input(body: Body) -> str | None:
    if "input" not in body:
        return "body.input: required"
    value = body["input"]
    if isinstance(value, str):
        return None if value else "body.input: must not be empty"
    if not isinstance(value, list):
        return f"body.input: must be a string or a list of items, got {json_type(value)}"
    if not value:
        return "body.input: must not be empty"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"body.input[{index}]: must be an object, got {json_type(item)}"
    return None


def _check_instructions(body: Body) -> str | None:
    value = body.get("instructions")
    if value is None or isinstance(value, str):
        return None
    return f"body.instructions: must be a string, got {json_type(value)}"


def _check_stateless(body: Body) -> str | None:
    for key, why in _STATEFUL.items():
        if body.get(key) is not None:
            return f"body.{key}: not supported ({why})"
    if body.get("background") not in (None, False):
        return "body.background: not supported (the answer would be a queued response, not the response)"
    return None


def _item_text(item: Any) -> str:
    """The text of one input item: a message's content (a string or its parts' text), a tool's output."""
    if not isinstance(item, dict):
        return ""
    content = item.get("content", item.get("output", item.get("arguments")))
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
