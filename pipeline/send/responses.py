"""Reading a successful answer: model, finish reasons, the text a person wants, and usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


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


def parse_success(body: bytes, content_type: str | None) -> Parsed:
    """Parse a 2xx body of any endpoint; a text body (audio text/srt/vtt) is the output itself."""
    if content_type is not None and "json" not in content_type:
        return Parsed(output=body.decode("utf-8", "replace"))
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Parsed(output=body.decode("utf-8", "replace"))
    if not isinstance(data, dict):
        return Parsed(output=body.decode("utf-8", "replace"))
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    choices = data.get("choices") if isinstance(data.get("choices"), list) else None
    reasons = [str(c.get("finish_reason")) for c in choices or [] if isinstance(c, dict)]
    audio_seconds = _number(data.get("duration"))
    if usage.get("type") == "duration":
        audio_seconds = _number(usage.get("seconds"))
    prompt, completion, total = _tokens(usage)
    return Parsed(
        response_id=_str(data.get("id")),
        model=_str(data.get("model")),
        finish_reasons="|".join(reasons) if reasons else None,
        output=_first_output(choices) if choices is not None else _str(data.get("text")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        audio_seconds=audio_seconds,
    )


def usage_of(body: bytes) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, total) tokens of any JSON body that reports usage; Nones otherwise."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    usage = data.get("usage") if isinstance(data, dict) else None
    return _tokens(usage) if isinstance(usage, dict) else (None, None, None)


def _tokens(usage: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """The one reading of a `usage` object: (prompt, completion, total), token-billed audio names included."""
    return (
        _int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        _int(usage.get("completion_tokens", usage.get("output_tokens"))),
        _int(usage.get("total_tokens")),
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
