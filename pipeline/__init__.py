"""pipeline: run bulk OpenAI-style API jobs from a JSONL file, rate-aware and crash-safe.

For now the public names are the settings, the states and the error tree; the commands (`pipeline --help`)
are the way in.
"""

from pipeline.errors import (
    APIError,
    BatchNotFound,
    ConfigError,
    ConnectError,
    DuplicateBatch,
    JobFileError,
    LineError,
    PermanentError,
    PipelineError,
    QuotaExhausted,
    RateLimited,
    RetryableError,
)
from pipeline.settings import Settings
from pipeline.store.models import BatchState, RequestStatus

__all__ = [
    "APIError",
    "BatchNotFound",
    "BatchState",
    "ConfigError",
    "ConnectError",
    "DuplicateBatch",
    "JobFileError",
    "LineError",
    "PermanentError",
    "PipelineError",
    "QuotaExhausted",
    "RateLimited",
    "RequestStatus",
    "RetryableError",
    "Settings",
]
