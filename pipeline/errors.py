"""Every error pipeline raises on purpose, rooted in one class.

    PipelineError
    ├── ConfigError                 bad settings, flags or environment
    ├── ConnectError                broker or database unreachable (URL shown with the password masked)
    ├── JobFileError                a job file with bad lines; carries every LineError
    ├── BatchNotFound               no such batch
    ├── DuplicateBatch              the same job file was submitted before; carries its batch id
    └── APIError                    one attempt at the remote API went wrong
        ├── RetryableError          worth another attempt: 408, 409, 429 rate_limit_exceeded, 5xx, timeouts
        │   └── RateLimited         429 rate_limit_exceeded: cools down every sender of the key
        └── PermanentError          never retried: 400, 401, 403, 404, 413, 422, "request too large"
            └── QuotaExhausted      429 insufficient_quota: pauses the whole batch

Retry policy keys on RetryableError alone; the engine stores PermanentError on the row.
"""

from __future__ import annotations

from dataclasses import dataclass


class PipelineError(Exception):
    """Base of every error pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Settings, flags or environment that cannot work."""


class ConnectError(PipelineError):
    """The broker or the database could not be reached."""


class BatchNotFound(PipelineError):
    """No batch with that id (or no batch at all)."""


@dataclass(frozen=True)
class LineError:
    """One bad line of a job file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class JobFileError(PipelineError):
    """A job file with bad lines. `errors` holds every one, in file order."""

    def __init__(self, errors: list[LineError], total_bad: int | None = None) -> None:
        self.errors = errors
        self.total_bad = total_bad if total_bad is not None else len(errors)
        super().__init__(f"{self.total_bad} invalid line(s)")


class APIError(PipelineError):
    """One attempt at the remote API failed.

    `status` is the HTTP status (None for timeouts and connection errors), `error_type` a short machine name
    (`rate_limit_exceeded`, `server_error`, `timeout`, ...), `retry_after` the seconds the server asked for.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str = "api_error",
        retry_after: float | None = None,
        body: bytes | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        self.body = body
        self.request_id = request_id


class RetryableError(APIError):
    """Worth another attempt after a backoff."""


class RateLimited(RetryableError):
    """429 rate_limit_exceeded: every sender of this key should cool down for `retry_after`."""


class PermanentError(APIError):
    """Sending the same request again cannot succeed."""


class QuotaExhausted(PermanentError):
    """429 insufficient_quota: the account is out of credit; the batch pauses."""


class DuplicateBatch(PipelineError):
    """The same job file (same bytes and options) was submitted before."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"this file was already submitted as batch {batch_id}")
        self.batch_id = batch_id
