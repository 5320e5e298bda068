"""Turning one HTTP answer into success or an APIError, and deciding how long to wait before the next try.

The policy is DESIGN.md's, in one place:

| answer                                   | class           | retried |
|------------------------------------------|-----------------|---------|
| 2xx (any finish reason)                  | success         | -       |
| 429 rate_limit_exceeded                  | RateLimited     | yes     |
| 429 "Request too large"                  | PermanentError  | no      |
| 429 insufficient_quota                   | QuotaExhausted  | no (pauses the batch) |
| 401, 403                                 | AccessDenied    | no (pauses the batch) |
| 404                                      | NotFound        | no (pauses the batch) |
| 408, 409, 5xx, timeouts, connection errors | RetryableError | yes     |
| 400, 413, 422, other 4xx                 | PermanentError  | no      |
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from tenacity import RetryCallState

from pipeline.errors import (
    AccessDenied,
    APIError,
    ErrorType,
    NotFound,
    PermanentError,
    QuotaExhausted,
    RateLimited,
    RetryableError,
)
from pipeline.ratelimit.rules import RateHeaders
from pipeline.retrying import backoff

#: First backoff when the server gives no hint, as the official client does.
INITIAL_BACKOFF = 0.5
#: Longest backoff when the server gives no hint.
MAX_BACKOFF = 8.0
#: Longest wait we honour from a server hint (Retry-After, x-ratelimit-reset-*), for one request and for the
#: cooldown of a whole key: a Retry-After of hours is a misconfigured proxy more often than a real limit,
#: and past this the official client ignores the hint too. A longer real limit costs a few more 429s.
MAX_SERVER_WAIT = 120.0
#: Statuses worth another attempt besides 429 and 5xx.
RETRYABLE_STATUSES = frozenset({408, 409})

_TRY_AGAIN = re.compile(r"(?:try again in|retry after) (\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b", re.IGNORECASE)


def retry_after(headers: Mapping[str, str], message: str = "", kind: str | None = None) -> float | None:
    """The wait the server asked for, in seconds, from the most precise hint present.

    Order: `retry-after-ms`, `Retry-After` (seconds or an HTTP date), "try again in 644ms" (OpenAI) or
    "Please retry after 33 seconds" (Azure) in the message, then `x-ratelimit-reset-<kind>` (kind
    `requests` or `tokens`; both, the longer, when unknown).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    if (ra := lower.get("retry-after")) is not None:
        try:
            return float(ra)
        except ValueError:
            try:
                when = parsedate_to_datetime(ra)
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError):
                pass
    if match := _TRY_AGAIN.search(message):
        value = float(match.group(1))
        return value / 1000.0 if match.group(2).lower() == "ms" else value
    return RateHeaders.parse(headers).reset(kind if kind in ("requests", "tokens") else None)


def error_fields(body: bytes) -> tuple[str | None, str | None, str]:
    """(code, type, message) of an OpenAI error body; Nones and the raw text when it is not one."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, body[:500].decode("utf-8", "replace")
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return None, None, body[:500].decode("utf-8", "replace")
    code, kind, message = err.get("code"), err.get("type"), err.get("message")
    if isinstance(code, str) and code.isdigit():  # Azure repeats the status as its code ("429", "404")
        code = None
    return (
        str(code) if code is not None else None,
        str(kind) if kind is not None else None,
        str(message) if message is not None else "",
    )


def classify(status: int, headers: Mapping[str, str], body: bytes) -> APIError | None:
    """None for a success, else the error this answer means (see the module table)."""
    if 200 <= status < 300:
        return None
    code, kind, message = error_fields(body)
    request_id = next((v for k, v in headers.items() if k.lower() == "x-request-id"), None)
    common: dict[str, Any] = {"status": status, "body": body, "request_id": request_id}
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 429:
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return QuotaExhausted(text, error_type=ErrorType.INSUFFICIENT_QUOTA, **common)
        if message.lower().startswith("request too large"):
            return PermanentError(text, error_type=ErrorType.REQUEST_TOO_LARGE, **common)
        wait = capped_wait(retry_after(headers, message, kind))
        return RateLimited(text, error_type=code or ErrorType.RATE_LIMITED, retry_after=wait, **common)
    if status >= 500 or status in RETRYABLE_STATUSES:
        wait = capped_wait(retry_after(headers, message))
        return RetryableError(
            text, error_type=code or kind or _status_name(status), retry_after=wait, **common
        )
    error_type = code or kind or _status_name(status)
    if status in (401, 403):  # the key, organization or project: every other request would fail alike
        return AccessDenied(text, error_type=error_type, **common)
    if status == 404:  # an unknown model or path: the same for the batch's other requests of it
        text += _NOT_FOUND_HINTS.get(code or message, "" if code == "model_not_found" else _BASE_URL_HINT)
        return NotFound(text, error_type=error_type, **common)
    return PermanentError(text, error_type=error_type, **common)


def capped_wait(seconds: float | None) -> float | None:
    """A server's wait hint, capped at MAX_SERVER_WAIT."""
    return None if seconds is None else min(max(0.0, seconds), MAX_SERVER_WAIT)


def backoff_delay(
    attempt: int, server_wait: float | None = None, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    A server hint wins (capped at MAX_SERVER_WAIT, plus up to 10% so that senders do not return in lockstep);
    otherwise exponential from INITIAL_BACKOFF to MAX_BACKOFF with the official client's 0.75-1.0 jitter
    (`retrying.backoff`, the database's and Redis's too).
    """
    if server_wait is not None:
        return min(server_wait, MAX_SERVER_WAIT) * (1.0 + 0.1 * rand())
    return backoff(attempt, INITIAL_BACKOFF, MAX_BACKOFF, rand)


_BASE_URL_HINT = " (is the base URL right? OpenAI's is https://api.openai.com/v1)"
#: What a 404 probably means, by its code (or message): Azure's two.
_NOT_FOUND_HINTS = {
    "DeploymentNotFound": " (a line's model names its Azure deployment: is there one of that name?)",
    "Resource not found": " (Azure: is the api-version one it serves? Without --api-version: its v1 API)",
}

#: Our error type for an HTTP error status whose body names no code.
_STATUS_TYPES = {
    400: ErrorType.BAD_REQUEST,
    401: ErrorType.UNAUTHORIZED,
    403: ErrorType.FORBIDDEN,
    404: ErrorType.NOT_FOUND,
    408: ErrorType.REQUEST_TIMEOUT,
    409: ErrorType.CONFLICT,
    413: ErrorType.PAYLOAD_TOO_LARGE,
    422: ErrorType.UNPROCESSABLE,
}


def _status_name(status: int) -> str:
    if status >= 500:
        return ErrorType.SERVER_ERROR
    return _STATUS_TYPES.get(status, f"http_{status}")


def wait_after_first(state: RetryCallState) -> float:
    """tenacity's wait after the first attempt (sent outside tenacity): its attempt 1 is the request's
    second, so the backoff is one step further."""
    exc = state.outcome.exception() if state.outcome else None
    server_wait = exc.retry_after if isinstance(exc, APIError) else None
    return backoff_delay(state.attempt_number + 1, server_wait)
