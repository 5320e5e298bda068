"""pipeline: run bulk OpenAI-style API jobs from a JSONL file, rate-aware and crash-safe.

The Python API (see `pipeline.api`):

    results = pipeline.run(rows, endpoint="chat")      # or a path to a job file
    async_results = await pipeline.arun(rows)
    for r in pipeline.results(batch_id): ...

plus `Settings`, the states and the error tree. Importing `pipeline` stays cheap (every command starts by
importing it): the engine, the store and their libraries load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import (
    AccessDenied,
    APIError,
    BadResponse,
    BatchBlocked,
    BatchNotFound,
    ConfigError,
    ConnectError,
    DuplicateBatch,
    EndpointDown,
    ErrorType,
    JobFileError,
    LineError,
    NotFound,
    PathError,
    PermanentError,
    PipelineError,
    QuotaExhausted,
    RateLimited,
    RetryableError,
)
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.api import arun, results, run
    from pipeline.store.models import BatchState, RequestStatus

__all__ = [
    "APIError",
    "AccessDenied",
    "BadResponse",
    "BatchBlocked",
    "BatchNotFound",
    "BatchState",
    "ConfigError",
    "ConnectError",
    "DuplicateBatch",
    "EndpointDown",
    "ErrorType",
    "JobFileError",
    "LineError",
    "NotFound",
    "PathError",
    "PermanentError",
    "PipelineError",
    "QuotaExhausted",
    "RateLimited",
    "RequestStatus",
    "RetryableError",
    "Settings",
    "arun",
    "results",
    "run",
]

#: Public names that load heavier modules, imported on first use (PEP 562).
_LAZY = {
    "run": "pipeline.api",
    "arun": "pipeline.api",
    "results": "pipeline.api",
    "BatchState": "pipeline.store.models",
    "RequestStatus": "pipeline.store.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
