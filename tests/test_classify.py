"""The retry classifier against every status and error body DESIGN.md names, and the backoff function."""

from __future__ import annotations

import orjson
import pytest

from pipeline.errors import (
    AccessDenied,
    BatchBlocked,
    NotFound,
    PermanentError,
    QuotaExhausted,
    RateLimited,
    RetryableError,
)
from pipeline.ratelimit.rules import parse_duration
from pipeline.send.classify import backoff_delay, classify, retry_after


def body(message: str, kind: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


RATE_LIMIT = body(
    "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. "
    "Please try again in 644ms.",
    "requests",
    "rate_limit_exceeded",
)
TOO_LARGE = body(
    "Request too large for gpt-4 on tokens per min (TPM): Limit 10000, Requested 50000.",
    "tokens",
    "rate_limit_exceeded",
)
QUOTA = body(
    "You exceeded your current quota, please check your plan.", "insufficient_quota", "insufficient_quota"
)
SERVER = body("The server had an error while processing your request.", "server_error")


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_is_not_an_error(status: int) -> None:
    assert classify(status, {}, b"{}") is None


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    error = classify(status, {}, SERVER)
    assert isinstance(error, RetryableError) and not isinstance(error, RateLimited)
    assert error.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_permanent_statuses(status: int) -> None:
    error = classify(status, {}, body("bad", "invalid_request_error"))
    assert isinstance(error, PermanentError)
    assert error.status == status
    assert "bad" in error.message


@pytest.mark.parametrize(("status", "kind"), [(401, AccessDenied), (403, AccessDenied), (404, NotFound)])
def test_errors_no_line_can_fix_block_the_batch(status: int, kind: type[BatchBlocked]) -> None:
    error = classify(status, {}, body("no", "invalid_request_error"))
    assert isinstance(error, kind) and isinstance(error, BatchBlocked)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_errors_about_one_line_fail_only_the_line(status: int) -> None:
    assert not isinstance(classify(status, {}, body("no", "invalid_request_error")), BatchBlocked)


def test_rate_limit_is_retried_with_the_wait_from_the_message() -> None:
    error = classify(429, {}, RATE_LIMIT)
    assert isinstance(error, RateLimited)
    assert error.error_type == "rate_limit_exceeded"
    assert error.retry_after == pytest.approx(0.644)


def test_insufficient_quota_is_never_retried() -> None:
    error = classify(429, {}, QUOTA)
    assert isinstance(error, QuotaExhausted) and isinstance(error, PermanentError)
    assert error.error_type == "insufficient_quota"


def test_request_too_large_is_permanent_although_its_code_is_rate_limit() -> None:
    error = classify(429, {}, TOO_LARGE)
    assert isinstance(error, PermanentError) and not isinstance(error, RetryableError)
    assert error.error_type == "request_too_large"


def test_a_non_json_error_body_still_classifies() -> None:
    error = classify(502, {"content-type": "text/html"}, b"<html>Bad gateway</html>")
    assert isinstance(error, RetryableError)
    assert "Bad gateway" in error.message


def test_request_id_is_kept() -> None:
    error = classify(500, {"x-request-id": "req_abc"}, SERVER)
    assert error is not None and error.request_id == "req_abc"


@pytest.mark.parametrize(
    ("headers", "message", "kind", "expected"),
    [
        ({"retry-after-ms": "250"}, "", None, 0.25),
        ({"Retry-After": "3"}, "", None, 3.0),
        ({"retry-after-ms": "250", "retry-after": "3"}, "", None, 0.25),
        ({}, "Please try again in 1.5s.", None, 1.5),
        ({}, "Please try again in 20ms.", None, 0.02),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, "", "requests", 1.0),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, "", "tokens", 360.0),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "20ms"}, "", None, 1.0),
        ({}, "", None, None),
        ({"retry-after": "soon"}, "", None, None),
    ],
)
def test_retry_after_sources(
    headers: dict[str, str], message: str, kind: str | None, expected: float | None
) -> None:
    assert retry_after(headers, message, kind) == (pytest.approx(expected) if expected is not None else None)


def test_rate_limit_headers_win_over_the_message() -> None:
    error = classify(429, {"retry-after-ms": "1500"}, RATE_LIMIT)
    assert error is not None and error.retry_after == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h23m31s", 5011.0),
        ("0.5s", 0.5),
        ("2", 2.0),
        ("x", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    assert backoff_delay(1, rand=lambda: 0.0) == pytest.approx(0.375)
    assert backoff_delay(1, rand=lambda: 1.0) == pytest.approx(0.5)
    assert backoff_delay(3, rand=lambda: 1.0) == pytest.approx(2.0)
    assert backoff_delay(10, rand=lambda: 1.0) == pytest.approx(8.0)


def test_backoff_honours_the_server_wait_plus_a_little_spread() -> None:
    assert backoff_delay(1, 2.0, rand=lambda: 0.0) == pytest.approx(2.0)
    assert backoff_delay(1, 2.0, rand=lambda: 1.0) == pytest.approx(2.2)
    assert backoff_delay(5, 10_000.0, rand=lambda: 0.0) == pytest.approx(120.0)


def test_a_retry_after_of_hours_is_capped_for_the_request_and_the_cooldown() -> None:
    """The error's retry_after feeds both the request's backoff and the key's cooldown."""
    for status, body in ((429, b'{"error": {"code": "rate_limit_exceeded"}}'), (503, b"{}")):
        error = classify(status, {"Retry-After": "7200"}, body)
        assert error is not None and error.retry_after == 120.0
