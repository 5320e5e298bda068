"""Reading a 2xx answer: checked to be the endpoint's answer, then parsed by the endpoint.

A 2xx counts only if it is what the endpoint answers (a JSON object with `choices` for chat and legacy
completions; for audio a JSON object with `text`, or plain text for text, srt and vtt; see each endpoint's
`parse`). An empty body, truncated JSON, an HTML page from a proxy, `{}` or an error object sent with 200 is
a `BadResponse` (retried like a 5xx), never a success with nothing in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.endpoints import Endpoint, Parsed
from pipeline.endpoints.base import usage_tokens
from pipeline.errors import APIError, BadResponse
from pipeline.send.classify import classify

__all__ = ["Parsed", "Usage", "parse_answer", "parse_data", "result_row", "usage_of"]

#: Bytes of a bad answer quoted in its error message.
QUOTED_BYTES = 200


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class Usage:
    """What one answer says the API charged: tokens (cached ones are part of the prompt) or audio seconds."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    audio_seconds: float | None = None
    reasoning_tokens: int | None = None


def parse_answer(
    endpoint: Endpoint, plain_text: bool, status: int, body: bytes, content_type: str | None
) -> Parsed:
    """The 2xx `body` as the endpoint's answer (`plain_text`: asked for as text), parsed; BadResponse when
    it is not one."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not body:
        raise _bad(endpoint, status, "an empty body", body)
    if plain_text:
        if media and (not media.startswith("text/") or media == "text/html"):
            raise _bad(endpoint, status, f"a {media} body where text was asked for", body)
        try:
            return endpoint.parse_text(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(endpoint, status, "text that is not UTF-8", body) from None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        what = "truncated or invalid JSON" if "json" in media else f"a {media or 'non-JSON'} body"
        raise _bad(endpoint, status, what, body) from None
    return parse_data(endpoint, status, data, body)


def parse_data(endpoint: Endpoint, status: int, data: Any, body: bytes | None = None) -> Parsed:
    """An answer already parsed from JSON (`body`: its bytes, if at hand, quoted when it is no answer)."""
    found = endpoint.parse(data) if isinstance(data, dict) else "JSON that is not an object"
    if isinstance(found, str):
        raise _bad(endpoint, status, found, body if body is not None else orjson.dumps(data))
    return found


def _bad(endpoint: Endpoint, status: int, what: str, body: bytes) -> BadResponse:
    quoted = body[:QUOTED_BYTES].decode("utf-8", "replace")
    return BadResponse(
        f"HTTP {status} but not a {endpoint.url} answer: {what}; body starts {quoted!r}",
        status=status,
        body=body,
    )


def usage_of(body: bytes) -> Usage:
    """The token usage of any JSON body that reports it (an error answer that was charged); else empty."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Usage()
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    prompt, completion, total, cached, reasoning = usage_tokens(usage)
    return Usage(prompt, completion, total, cached, reasoning_tokens=reasoning)


def result_row(
    status: int | None,
    request_id: str | None,
    headers: Mapping[str, str] | None,
    raw: bytes,
    parsed: Parsed | None,
) -> dict[str, Any]:
    """The `results` row of a final answer: the raw body (or the body the endpoint stores instead) and what
    was parsed from it."""
    content_type = headers.get("Content-Type") if headers is not None else None
    stored = parsed.body if parsed is not None and parsed.body is not None else raw
    return {
        "http_status": status or 0,
        "x_request_id": request_id or (headers.get("x-request-id") if headers is not None else None),
        "content_type": content_type or "application/json",
        "body": stored.decode("utf-8", "replace"),
        "response_id": parsed.response_id if parsed else None,
        "model": parsed.model if parsed else None,
        "finish_reasons": parsed.finish_reasons if parsed else None,
        "output": parsed.output if parsed else None,
        "prompt_tokens": parsed.prompt_tokens if parsed else None,
        "completion_tokens": parsed.completion_tokens if parsed else None,
        "total_tokens": parsed.total_tokens if parsed else None,
        "audio_seconds": parsed.audio_seconds if parsed else None,
        "reasoning_tokens": parsed.reasoning_tokens if parsed else None,
        "flagged": parsed.flagged if parsed else None,
        "dimensions": parsed.dimensions if parsed else None,
        "vectors": parsed.vectors if parsed else None,
    }


def answer_of(
    endpoint: Endpoint,
    plain_text: bool,
    status: int | None,
    headers: Mapping[str, str],
    raw: bytes,
    error: APIError | None,
) -> tuple[Parsed | None, APIError | None]:
    """An exchange's answer parsed (a 2xx) or the error it means (anything else, or a 2xx that is no
    answer)."""
    if error is not None or status is None:
        return None, error
    if not 200 <= status < 300:
        return None, classify(status, headers, raw)
    try:
        return parse_answer(endpoint, plain_text, status, raw, headers.get("Content-Type")), None
    except APIError as bad:
        return None, bad
