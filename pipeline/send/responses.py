"""Reading a 2xx answer: checked to be the endpoint's answer, then model, finish reasons, text and usage.

A 2xx counts only if it is what the endpoint answers: a JSON object with `choices` for chat and legacy
completions; for audio a JSON object with `text` (json, verbose_json), or plain text (text, srt, vtt).
An empty body, truncated JSON, an HTML page from a proxy, `{}` or an error object sent with 200 is a
`BadResponse` (retried like a 5xx), never a success with nothing in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.endpoints import AUDIO_TEXT_FORMATS, AUDIO_URLS
from pipeline.errors import BadResponse

#: Bytes of a bad answer quoted in its error message.
QUOTED_BYTES = 200


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the database keeps next to the raw body."""

    response_id: str | None = None
    model: str | None = None
    finish_reasons: str | None = None  #: every choice's, in order, joined with |
    output: str | None = (
        None  #: the first choice's text (or its function/tool call as JSON), or the transcript
    )
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    audio_seconds: float | None = None
    cached_tokens: int | None = None  #: prompt tokens served from the prompt cache


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer says the API charged: tokens (cached ones are part of the prompt) or audio seconds."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    audio_seconds: float | None = None


def parse_answer(
    url: str, response_format: str | None, status: int, body: bytes, content_type: str | None
) -> Parsed:
    """The 2xx `body` as `url`'s answer, parsed; BadResponse when it is not one."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not body:
        raise _bad(url, status, "an empty body", body)
    if url in AUDIO_URLS and (response_format or "json") in AUDIO_TEXT_FORMATS:
        if media and (not media.startswith("text/") or media == "text/html"):
            raise _bad(url, status, f"a {media} body where {response_format} text was asked for", body)
        try:
            return Parsed(output=body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(url, status, "text that is not UTF-8", body) from None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        what = "truncated or invalid JSON" if "json" in media else f"a {media or 'non-JSON'} body"
        raise _bad(url, status, what, body) from None
    problem = _answer_problem(url, data)
    if problem:
        raise _bad(url, status, problem, body)
    return parse_success(data)


def _answer_problem(url: str, data: Any) -> str | None:
    if not isinstance(data, dict):
        return "JSON that is not an object"
    if url in AUDIO_URLS:
        return None if isinstance(data.get("text"), str) else "no `text` in the transcript"
    choices = data.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices):
        return None
    return "an error object" if "error" in data else "no `choices`"


def _bad(url: str, status: int, what: str, body: bytes) -> BadResponse:
    quoted = body[:QUOTED_BYTES].decode("utf-8", "replace")
    return BadResponse(
        f"HTTP {status} but not a {url} answer: {what}; body starts {quoted!r}", status=status, body=body
    )


def parse_success(data: dict[str, Any]) -> Parsed:
    """Parse an answer already known to be the endpoint's JSON object."""
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    choices = data.get("choices") if isinstance(data.get("choices"), list) else None
    reasons = [str(c.get("finish_reason")) for c in choices or [] if isinstance(c, dict)]
    audio_seconds = _number(data.get("duration"))
    if usage.get("type") == "duration":
        audio_seconds = _number(usage.get("seconds"))
    prompt, completion, total, cached = _tokens(usage)
    return Parsed(
        response_id=_str(data.get("id")),
        model=_str(data.get("model")),
        finish_reasons="|".join(reasons) if reasons else None,
        output=_first_output(choices) if choices is not None else _str(data.get("text")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        audio_seconds=audio_seconds,
        cached_tokens=cached,
    )


def usage_of(body: bytes) -> Usage:
    """The token usage of any JSON body that reports it (an error answer that was charged); else empty."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Usage()
    usage = data.get("usage") if isinstance(data, dict) else None
    return Usage(*_tokens(usage)) if isinstance(usage, dict) else Usage()


def _tokens(usage: dict[str, Any]) -> tuple[int | None, int | None, int | None, int | None]:
    """The one reading of a `usage` object: (prompt, completion, total, cached), token-billed audio names
    included."""
    details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    return (
        _int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        _int(usage.get("completion_tokens", usage.get("output_tokens"))),
        _int(usage.get("total_tokens")),
        cached,
    )


def _first_output(choices: list[Any]) -> str | None:
    if not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if "text" in choice:  # legacy completions
        return _str(choice.get("text"))
    message = choice.get("message") or {}
    content = message.get("content")
    if content is not None:
        return content if isinstance(content, str) else orjson.dumps(content).decode()
    for key in ("tool_calls", "function_call"):
        if message.get(key):
            return orjson.dumps(message[key]).decode()
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def result_row(
    status: int | None,
    request_id: str | None,
    headers: Mapping[str, str] | None,
    raw: bytes,
    parsed: Parsed | None,
) -> dict[str, Any]:
    """The `results` row of a final answer: the raw body and what was parsed from it."""
    content_type = headers.get("Content-Type") if headers is not None else None
    return {
        "http_status": status or 0,
        "x_request_id": request_id or (headers.get("x-request-id") if headers is not None else None),
        "content_type": content_type or "application/json",
        "body": raw.decode("utf-8", "replace"),
        "response_id": parsed.response_id if parsed else None,
        "model": parsed.model if parsed else None,
        "finish_reasons": parsed.finish_reasons if parsed else None,
        "output": parsed.output if parsed else None,
        "prompt_tokens": parsed.prompt_tokens if parsed else None,
        "completion_tokens": parsed.completion_tokens if parsed else None,
        "total_tokens": parsed.total_tokens if parsed else None,
        "audio_seconds": parsed.audio_seconds if parsed else None,
    }
