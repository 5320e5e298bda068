"""Every error pipeline raises on purpose, rooted in one class.

    PipelineError
    ├── ConfigError                 bad settings, flags or environment
    ├── ConnectError                broker or database unreachable (URL shown with the password masked)
    ├── PathError                   a file named on the command line cannot be read or written
    ├── JobFileError                a job file with bad lines; carries every LineError
    ├── BatchNotFound               no such batch (or no unique batch with that id prefix)
    ├── BatchPaused                 the Python API waited on a batch that paused; carries its id and reason
    ├── DuplicateBatch              the same job file was submitted before; carries its batch id
    └── APIError                    one attempt at the remote API went wrong
        ├── RetryableError          worth another attempt: 408, 409, 429 rate_limit_exceeded, 5xx, timeouts
        │   ├── RateLimited         429 rate_limit_exceeded: cools down every sender of the key
        │   └── BadResponse         a 2xx whose body is not the endpoint's answer (empty, HTML, truncated...)
        └── PermanentError          never retried: 400, 413, 422, "request too large": fails the row
            └── BatchBlocked        no request of the batch can succeed until someone acts: the batch pauses
                ├── QuotaExhausted  429 insufficient_quota
                ├── AccessDenied    401, 403: a wrong key, no access to the organization or project
                ├── NotFound        404: an unknown model, or a base URL with a wrong path
                ├── EndpointDown    the circuit breaker: no attempt connected (or all got 5xx) for a while
                └── SpendCapReached the batch's spend cap cannot cover the next attempt (--max-cost)

Retry policy keys on RetryableError alone; the engine stores PermanentError on the row, except BatchBlocked,
which pauses the batch and puts the row back in the queue (`pipeline resume` continues).

`error_type` on a row or an attempt is the API's own error code when its answer gave one
(`invalid_api_key`, `context_length_exceeded`, ...), else one of `ErrorType`, or `http_<status>` for an
HTTP error status the table does not name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Our names for what went wrong, stored in `error_type` when the API gave no code of its own."""

    RATE_LIMITED = "rate_limit_exceeded"  #: 429 rate_limit_exceeded: retried after a cooldown
    INSUFFICIENT_QUOTA = "insufficient_quota"  #: 429 insufficient_quota: the batch pauses
    REQUEST_TOO_LARGE = "request_too_large"  #: 429 "Request too large": can never succeed
    BAD_REQUEST = "bad_request"  #: 400
    UNAUTHORIZED = "unauthorized"  #: 401
    FORBIDDEN = "forbidden"  #: 403
    NOT_FOUND = "not_found"  #: 404
    REQUEST_TIMEOUT = "request_timeout"  #: 408
    CONFLICT = "conflict"  #: 409
    PAYLOAD_TOO_LARGE = "payload_too_large"  #: 413
    UNPROCESSABLE = "unprocessable_entity"  #: 422
    SERVER_ERROR = "server_error"  #: 5xx
    API_ERROR = "api_error"  #: any other HTTP error without a code
    TIMEOUT = "timeout"  #: no answer within the timeout
    CONNECTION_ERROR = "connection_error"  #: the connection failed or broke
    BAD_RESPONSE = "bad_response"  #: a 2xx whose body is not the endpoint's answer: retried
    RESPONSE_TOO_LARGE = "response_too_large"  #: an answer above the size cap (PIPELINE_MAX_RESPONSE_BYTES)
    MISSING_AUDIO = "missing_audio"  #: the stored clip of an audio request is gone
    UNSTORABLE = "unstorable"  #: the outcome could not be stored even on its own; the row failed
    ENDPOINT_DOWN = "endpoint_down"  #: the circuit breaker tripped on this attempt; the batch paused
    NO_ACCOUNT = "no_account"  #: every account of the batch's pool is benched; the batch paused
    SPEND_CAP = "spend_cap"  #: the batch's spend cap cannot cover the attempt; the batch paused
    INVALID_LINE = "invalid_line"  #: the job file's line was invalid (stored with --skip-invalid)
    CANCELLED = "cancelled"  #: cancelled before it was sent
    BATCH_EXPIRED = "batch_expired"  #: the Batch API did not get to it within its 24 h window
    MISSING_ANSWER = "missing_answer"  #: the Batch API finished its part but has no line for it
    BATCH_REJECTED = "batch_rejected"  #: the Batch API turned its part away without saying why
    INTERNAL = "internal"  #: a bug in pipeline: the row went back to the queue


class PipelineError(Exception):
    """Base of every error pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Settings, flags or environment that cannot work."""


class ConnectError(PipelineError):
    """The broker or the database could not be reached or used (e.g. a database that cannot be written)."""


class PathError(PipelineError):
    """A file the command was given cannot be read or written: missing, a directory, no permission."""


class BatchNotFound(PipelineError):
    """No batch with that id (or no batch at all)."""


@dataclass(frozen=True)
class LineError:
    """One bad line of a job file. A `hint` says what to change for the whole file: it is shown once."""

    path: str
    line: int
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" + (f"; {self.hint}" if self.hint else "")


class JobFileError(PipelineError):
    """A job file with bad lines. `errors` holds the ones shown (the first 50), in file order; its message
    names the first SHOWN_IN_MESSAGE of them as `FILE:LINE: what is wrong`."""

    #: Bad lines named in the message (`errors` holds more).
    SHOWN_IN_MESSAGE = 5

    def __init__(self, errors: list[LineError], total_bad: int | None = None) -> None:
        self.errors = errors
        self.total_bad = total_bad if total_bad is not None else len(errors)
        lines = [str(error) for error in errors[: self.SHOWN_IN_MESSAGE]]
        more = self.total_bad - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        super().__init__("\n".join([f"{self.total_bad} invalid line(s):", *lines]))


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
        error_type: str = ErrorType.API_ERROR,
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


class BadResponse(RetryableError):
    """A 2xx whose body is not the endpoint's answer (empty, truncated, HTML, `{}`, an error object)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_type=ErrorType.BAD_RESPONSE, **kwargs)


class PermanentError(APIError):
    """Sending the same request again cannot succeed."""


class BatchBlocked(PermanentError):
    """Sending any request of the batch again cannot succeed until someone acts: the batch pauses."""


class QuotaExhausted(BatchBlocked):
    """429 insufficient_quota: the account is out of credit."""


class AccessDenied(BatchBlocked):
    """401 or 403: the API key is wrong, or has no access to the organization or project."""


class NotFound(BatchBlocked):
    """404: the model does not exist (for this key), or the base URL's path is wrong."""


class EndpointDown(BatchBlocked):
    """The circuit breaker tripped: every attempt for a while failed to connect, timed out or got 5xx."""


class SpendCapReached(BatchBlocked):
    """What the batch spent plus what is reserved for requests in flight would exceed its cap."""


class BatchPaused(PipelineError):
    """A batch the Python API was waiting on (`run`, `Batch.wait`, iterating its results) paused: a wrong
    key, no quota, an unknown model, the spend cap, an API that does not answer. `reason` says which;
    fix it, then `Batch.resume()` (or `pipeline resume BATCH`) continues."""

    def __init__(self, batch_id: str, reason: str | None) -> None:
        self.batch_id = batch_id
        self.reason = reason or "no reason recorded"
        super().__init__(
            f"batch {batch_id} paused: {self.reason} (fix the cause, then batch.resume() or "
            f"`pipeline resume {batch_id}`)"
        )


class DuplicateBatch(PipelineError):
    """The same job file (same bytes and options) was submitted before."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"this file was already submitted as batch {batch_id}")
        self.batch_id = batch_id
