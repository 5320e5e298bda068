"""pipeline: run bulk OpenAI-style API jobs from a JSONL file, rate-aware and crash-safe.

The Python API (see `pipeline.api` and `pipeline.handle`):

    batch = pipeline.submit(rows, endpoint="chat")     # or a path to a job file; a Batch, at once
    for r in batch: ...                                # each result as it is stored
    batch = pipeline.run(rows)                         # submit and wait; `await pipeline.arun(rows)`
    pipeline.batch("8f3a2b")                           # any stored batch, by id or prefix
    for r in pipeline.results("8f3a2b"): ...

plus `Settings`, the states, the error tree and `__version__`. Importing `pipeline` stays cheap (every
command starts by importing it): the engine, the store and their libraries load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import (
    AccessDenied,
    APIError,
    BadResponse,
    BatchBlocked,
    BatchNotFound,
    BatchPaused,
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
    from pipeline.api import arun, asubmit, batch, results, run, submit
    from pipeline.handle import Batch
    from pipeline.store.models import BatchState, RequestStatus

    __version__: str

__all__ = [
    "APIError",
    "AccessDenied",
    "BadResponse",
    "Batch",
    "BatchBlocked",
    "BatchNotFound",
    "BatchPaused",
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
    "__version__",
    "arun",
    "asubmit",
    "batch",
    "results",
    "run",
    "submit",
]

#: Public names that load heavier modules, imported on first use (PEP 562).
_LAZY = {
    "submit": "pipeline.api",
    "asubmit": "pipeline.api",
    "run": "pipeline.api",
    "arun": "pipeline.api",
    "batch": "pipeline.api",
    "results": "pipeline.api",
    "Batch": "pipeline.handle",
    "BatchState": "pipeline.store.models",
    "RequestStatus": "pipeline.store.models",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the installed distribution's metadata, read on first use
        from pipeline.about import version

        globals()[name] = version()
        return globals()[name]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
