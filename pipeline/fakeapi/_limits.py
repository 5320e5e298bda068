"""Requests-per-minute and tokens-per-minute limits in short buckets, and the quota.

Time is cut into buckets of `window` seconds counted from the limiter's start. Each bucket admits
rpm * window / 60 requests and tpm * window / 60 tokens. Two rules keep that workable:

* A request always fits an idle meter (nothing left over), even one larger than a bucket, so a
  request below the whole TPM can always run; what it takes beyond the bucket is carried into the
  following buckets, which keeps the long-run rate at the limit.
* A rejected request takes nothing.

Changing `window` while serving starts a fresh grid with idle meters; changing rpm or tpm keeps the
usage and applies the new capacity from the next check. The limits are org-wide: one set of meters
for every model and endpoint.

Headers, per limit kind:

* `x-ratelimit-limit-*`: the per-minute limit as configured.
* `x-ratelimit-remaining-*`: what the current bucket has left, scaled to a minute
  (left * 60 / window), so it reaches 0 exactly when the next request would be refused.
* `x-ratelimit-reset-*`: time until the meter is idle again (end of this bucket, plus whole buckets
  for any carried excess), as a Go duration; "0s" when idle.

A 429 carries `retry-after-ms` and `retry-after` (whole seconds, rounded up): the time until the
refused request would fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._config import FakeConfig
from ._protocol import ORGANIZATION, ApiError, go_duration

_EPSILON = 1e-9

_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


@dataclass(frozen=True)
class _Kind:
    """One limited quantity, named as OpenAI names it."""

    name: str  #: header suffix and error type: "requests" or "tokens"
    label: str  #: as in messages: "requests per min (RPM)"


_REQUESTS = _Kind("requests", "requests per min (RPM)")
_TOKENS = _Kind("tokens", "tokens per min (TPM)")


class _Meter:
    """Usage of one limit kind, carried over between buckets."""

    def __init__(self) -> None:
        self.used = 0.0
        self.index = 0

    def roll(self, index: int, capacity: float) -> None:
        """Move to bucket `index`: each elapsed bucket pays off one capacity of usage."""
        if index > self.index:
            self.used = max(0.0, self.used - capacity * (index - self.index))
            self.index = index

    def fits(self, need: float, capacity: float) -> bool:
        return self.used <= _EPSILON or self.used + need <= capacity + _EPSILON

    def buckets_to_fit(self, need: float, capacity: float) -> int:
        """Bucket boundaries to cross before `need` fits (>= 1 when it does not fit now)."""
        return max(1, math.ceil((self.used - max(capacity - need, 0.0)) / capacity - _EPSILON))

    def buckets_to_idle(self, capacity: float) -> int:
        return math.ceil(self.used / capacity - _EPSILON)


class RateLimiter:
    """The org-wide RPM and TPM meters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._origin = self._clock()
        self._window: float | None = None
        self._meters = {_REQUESTS.name: _Meter(), _TOKENS.name: _Meter()}

    def admit(self, config: FakeConfig, model: str, tokens: int) -> None:
        """Take one request and `tokens` tokens, or raise the 429 OpenAI would send and take nothing."""
        if config.tpm is not None and tokens > config.tpm:
            raise _too_large(model, config.tpm, tokens, self.headers(config))
        now, bucket_end = self._position(config)
        wanted = _active(config, tokens)
        for kind, limit, need in wanted:
            meter, capacity = self._meters[kind.name], limit * config.window / 60
            if not meter.fits(need, capacity):
                wait = bucket_end - now + (meter.buckets_to_fit(need, capacity) - 1) * config.window
                used = round(meter.used * 60 / config.window)
                raise _rate_limited(kind, model, limit, used, need, wait, self.headers(config))
        for kind, _, need in wanted:
            self._meters[kind.name].used += need

    def headers(self, config: FakeConfig) -> dict[str, str]:
        """The x-ratelimit-* headers for the limits that are set (none when neither is)."""
        now, bucket_end = self._position(config)
        headers: dict[str, str] = {}
        for kind, limit, _ in _active(config, 0):
            meter, capacity = self._meters[kind.name], limit * config.window / 60
            left = max(0.0, capacity - meter.used)
            idle_in = 0.0
            if meter.used > _EPSILON:
                idle_in = bucket_end - now + (meter.buckets_to_idle(capacity) - 1) * config.window
            headers[f"x-ratelimit-limit-{kind.name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind.name}"] = str(
                math.floor(left * 60 / config.window + _EPSILON)
            )
            headers[f"x-ratelimit-reset-{kind.name}"] = go_duration(idle_in)
        return headers

    def _position(self, config: FakeConfig) -> tuple[float, float]:
        """Roll every meter to the current bucket; return (now, end of the current bucket)."""
        now = self._clock()
        if self._window != config.window:  # a new bucket length starts a fresh grid
            self._origin, self._window = now, config.window
            for meter in self._meters.values():
                meter.used, meter.index = 0.0, 0
        index = math.floor((now - self._origin) / config.window)
        for kind, limit, _ in _active(config, 0):
            self._meters[kind.name].roll(index, limit * config.window / 60)
        return now, self._origin + (index + 1) * config.window


class Quota:
    """Successful answers so far, plus those being answered, so that concurrency never overshoots."""

    def __init__(self) -> None:
        self.succeeded = 0
        self.pending = 0

    def take(self, config: FakeConfig) -> None:
        """Reserve one success, or raise 429 insufficient_quota."""
        if config.quota is not None and self.succeeded + self.pending >= config.quota:
            raise ApiError(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more "
                "information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                type="insufficient_quota",
                code="insufficient_quota",
            )
        self.pending += 1

    def settle(self, succeeded: bool) -> None:
        """End a reservation: count it as a success, or release it."""
        self.pending -= 1
        self.succeeded += succeeded

    def reset(self) -> None:
        self.succeeded = 0


def _active(config: FakeConfig, tokens: int) -> list[tuple[_Kind, int, int]]:
    """(kind, per-minute limit, amount a request needs) for each limit that is set."""
    active = []
    if config.rpm is not None:
        active.append((_REQUESTS, config.rpm, 1))
    if config.tpm is not None:
        active.append((_TOKENS, config.tpm, tokens))
    return active


def _rate_limited(
    kind: _Kind, model: str, limit: int, used: int, need: int, wait: float, headers: dict[str, str]
) -> ApiError:
    wait_ms = max(1, math.ceil(wait * 1000 - 1e-6))
    message = (
        f"Rate limit reached for {model} in organization {ORGANIZATION} on {kind.label}: Limit {limit}, "
        f"Used {used}, Requested {need}. Please try again in {go_duration(wait_ms / 1000)}. {_LIMITS_URL}"
    )
    headers = {**headers, "retry-after-ms": str(wait_ms), "retry-after": str(math.ceil(wait_ms / 1000))}
    return ApiError(429, message, type=kind.name, code="rate_limit_exceeded", headers=headers)


def _too_large(model: str, limit: int, need: int, headers: dict[str, str]) -> ApiError:
    message = (
        f"Request too large for {model} in organization {ORGANIZATION} on {_TOKENS.label}: Limit {limit}, "
        f"Requested {need}. The input or output tokens must be reduced in order to run successfully. "
        f"{_LIMITS_URL}"
    )
    return ApiError(429, message, type=_TOKENS.name, code="rate_limit_exceeded", headers=headers)
