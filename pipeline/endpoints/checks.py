"""Small checks the endpoints' `validate` share, each returning the problem as `"body.x: ..."` or None."""

from __future__ import annotations

from typing import Any


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def one_of(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def is_int(value: object) -> bool:
    # bool is an int subclass, but `"n": true` is not a count
    return isinstance(value, int) and not isinstance(value, bool)


def check_string(body: dict[str, Any], key: str) -> str | None:
    """A required non-empty string, such as `model`."""
    if key not in body:
        return f"body.{key}: required"
    value = body[key]
    if not isinstance(value, str):
        return f"body.{key}: must be a string, got {json_type(value)}"
    return None if value else f"body.{key}: must not be empty"


def check_counts(body: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Optional positive integers; null means "use the default", as in the API."""
    for key in keys:
        value = body.get(key)
        if value is not None and not (is_int(value) and value > 0):
            return f"body.{key}: must be a positive integer, got {value!r}"
    return None


def check_stream(body: dict[str, Any]) -> str | None:
    """Streaming is refused on every endpoint: the answer is stored whole, never as raw server-sent events."""
    if body.get("stream") in (None, False):
        return None
    return "body.stream: not supported (answers are stored whole, never as streamed chunks); remove it"
