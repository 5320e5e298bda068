"""Directives: a request that tells the fake how to answer it, so a test picks its faults from the job file.

A prompt (the last user message of a chat request when it is a string, the `prompt` of a legacy
completion when it is a string, the `prompt` field of an audio upload) that starts with "fake:" is a
directive: the rest must be a JSON object of the keys in `_KEYS`. The reference is the package
docstring (__init__.py); this module parses directives and applies the parts every endpoint shares
(latency, error answers, bad bodies, the request id). The endpoints apply `text` and `model`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from ._protocol import Answer, ApiError

#: What starts a directive.
PREFIX = "fake:"

#: Largest `pad`, in characters: large enough for response-size tests, small enough not to eat the host.
MAX_PAD = 100_000_000

#: The code of the 400 a malformed directive gets, to tell it apart from the fake's OpenAI errors.
INVALID_DIRECTIVE = "invalid_fake_directive"

#: The message of a directed 5xx (and of a 200 error body) that sets none: OpenAI's for a 500.
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"

#: What `pad` appends to an answer.
_FILLER = "."


class BadBody(StrEnum):
    """A 200 answer that is not an answer."""

    EMPTY = "empty"  #: no bytes at all, JSON content type
    TRUNCATED = "truncated"  #: the first half of the real answer
    HTML = "html"  #: a captive-portal page, text/html
    EMPTY_OBJECT = "empty_object"  #: {}
    ERROR = "error"  #: an OpenAI error body with status 200
    NOT_JSON = "not_json"  #: plain text under a JSON content type


#: A captive portal's sign-in page, as hotel and train Wi-Fi serves it instead of the API's answer.
_CAPTIVE_PORTAL = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in to Guest Wi-Fi</title></head>\n"
    b'<body><h1>Welcome!</h1><p>Please accept the terms of use to continue.</p>\n<form method="post" '
    b'action="/login"><button type="submit">Accept and connect</button></form></body></html>\n'
)

#: Plain text as a proxy in front of the API sends it, here under a JSON content type.
_NOT_JSON = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"


@dataclass(frozen=True)
class Directive:
    """How to answer one request; None everywhere means as usual."""

    model: str | None = None  #: the answer's `model` field
    request_id: str | None = None  #: the answer's x-request-id header
    content: str | None = None  #: the answer text
    pad: int | None = None  #: the answer text's exact length in characters
    status: int | None = None  #: answer this HTTP error
    code: str | None = None  #: the error's `code`
    type: str | None = None  #: the error's `type`
    message: str | None = None  #: the error's `message`
    body: BadBody | None = None  #: answer 200 with a body that is not an answer
    times: int | None = None  #: in force for this many receipts of the same request body; None: always
    latency: float = 0.0  #: seconds to wait before answering

    def in_force(self, receipt: int) -> bool:
        """Whether the directive applies to the `receipt`-th receipt (from 1) of its request body."""
        return self.times is None or receipt <= self.times

    @property
    def shapes_text(self) -> bool:
        """Whether the directive changes the answer text."""
        return self.content is not None or self.pad is not None

    def text(self, natural: str) -> str:
        """The answer text: `content` (else the natural text), then cut or filled to `pad` characters."""
        text = self.content if self.content is not None else natural
        if self.pad is None:
            return text
        return text[: self.pad] + _FILLER * (self.pad - len(text))

    def error(self) -> ApiError:
        """The error the directive answers with (for `body: "error"` too, which sends it with status 200)."""
        status = self.status if self.status is not None else (500 if self.body is BadBody.ERROR else 400)
        if status >= 500:
            message, kind = _SERVER_ERROR, "server_error"
        else:
            message, kind = f"The fake answers {status}, as its directive says.", "invalid_request_error"
        return ApiError(
            status,
            self.message if self.message is not None else message,
            type=self.type if self.type is not None else kind,
            code=self.code,
            headers=self._headers(),
        )

    async def shape(self, answer: Answer) -> Answer:
        """Wait, then turn the request's real `answer` into the one the directive asks for (or raise it)."""
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self.status is not None or (self.body is None and self.describes_error):
            raise self.error()
        if self.body is not None:
            answer = _bad_body(self, answer)
        return dataclasses.replace(answer, headers={**answer.headers, **self._headers()})

    @property
    def describes_error(self) -> bool:
        """Whether `code`, `type` or `message` is given."""
        return self.code is not None or self.type is not None or self.message is not None

    def _headers(self) -> dict[str, str]:
        return {"x-request-id": self.request_id} if self.request_id is not None else {}


def directive_in(prompt: Any) -> Directive | None:
    """The directive a prompt carries: None unless it is a string starting with PREFIX.

    Raises the 400 ApiError a malformed directive gets: the rest is not a JSON object, a key is unknown,
    a value has the wrong type or range, or keys contradict each other.
    """
    if not isinstance(prompt, str) or not prompt.startswith(PREFIX):
        return None
    try:
        keys = orjson.loads(prompt[len(PREFIX) :])
    except orjson.JSONDecodeError as exc:
        raise invalid_directive(f"after {PREFIX!r} comes a JSON object of directive keys ({exc})") from None
    if not isinstance(keys, dict):
        raise invalid_directive(f"after {PREFIX!r} comes a JSON object of directive keys")
    unknown = sorted(set(keys) - set(_KEYS))
    if unknown:
        named = ", ".join(repr(key) for key in unknown)
        raise invalid_directive(f"unknown key(s) {named}; the keys are {', '.join(sorted(_KEYS))}")
    directive = Directive(**{key: _KEYS[key](key, value) for key, value in keys.items()})
    _check_consistent(directive)
    return directive


def invalid_directive(problem: str) -> ApiError:
    return ApiError(400, f"Invalid fake directive: {problem}.", code=INVALID_DIRECTIVE)


def _check_consistent(directive: Directive) -> None:
    # A bad body is a 200 and only the "error" one carries an error object: anything else is a test typo.
    if directive.body is None:
        return
    if directive.status is not None:
        raise invalid_directive("'body' answers 200, so it cannot go with 'status'")
    if directive.body is not BadBody.ERROR and directive.describes_error:
        raise invalid_directive("'code', 'type' and 'message' go with 'status' or with 'body': 'error'")


def _bad_body(directive: Directive, answer: Answer) -> Answer:
    kind = directive.body
    if kind is BadBody.TRUNCATED:
        return Answer(answer.body[: len(answer.body) // 2], answer.content_type)
    if kind is BadBody.ERROR:
        return Answer.json(directive.error().body())
    if kind is BadBody.HTML:
        return Answer(_CAPTIVE_PORTAL, "text/html")
    if kind is BadBody.EMPTY_OBJECT:
        return Answer(b"{}")
    if kind is BadBody.NOT_JSON:
        return Answer(_NOT_JSON)
    return Answer(b"")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_directive(f"{key!r} must be a string")
    return value


def _header_value(key: str, value: Any) -> str:
    # HTTP cannot carry control characters in a header: refuse them rather than fail mid-answer.
    text = _string(key, value)
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise invalid_directive(f"{key!r} is a header value: no control characters")
    return text


def _integer(key: str, value: Any, low: int, high: int | None = None) -> int:
    if not isinstance(value, bool) and isinstance(value, int):
        if low <= value and (high is None or value <= high):
            return value
    bound = f">= {low}" if high is None else f"from {low} to {high}"
    raise invalid_directive(f"{key!r} must be an integer {bound}")


def _pad(key: str, value: Any) -> int:
    return _integer(key, value, 0, MAX_PAD)


def _status(key: str, value: Any) -> int:
    return _integer(key, value, 400, 599)


def _times(key: str, value: Any) -> int:
    return _integer(key, value, 0)


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise invalid_directive(f"{key!r} must be a number of seconds >= 0")
    return float(value)


def _body(key: str, value: Any) -> BadBody:
    try:
        return BadBody(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in BadBody)
        raise invalid_directive(f"{key!r} must be one of {kinds}") from None


#: Directive key -> its check, which returns the value to keep or raises invalid_directive.
_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "model": _string,
    "request_id": _header_value,
    "content": _string,
    "pad": _pad,
    "status": _status,
    "code": _string,
    "type": _string,
    "message": _string,
    "body": _body,
    "times": _times,
    "latency": _seconds,
}
