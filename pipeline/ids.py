"""The one place that mints identifiers: batches, workers, requests without a custom id, exported lines."""

from __future__ import annotations

import os
import socket
import uuid


def new_batch_id() -> str:
    """A short random batch id (12 hex digits); commands accept any unique prefix of it."""
    return uuid.uuid4().hex[:12]


def new_worker_id() -> str:
    """Names one engine: host, process id and a random suffix (a process may run several engines)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def line_custom_id(line: int) -> str:
    """The custom id of a shorthand line (a bare request body), from its line number."""
    return f"line-{line}"


def invalid_line_id(line: int) -> str:
    """The custom id under which an invalid line is recorded (with --skip-invalid)."""
    return f"invalid-line-{line}"


def openai_request_id(request_id: int) -> str:
    """The Batch API style id of a request in exports: stable, since it derives from the row's key."""
    return f"batch_req_{request_id:032x}"
