"""The one place that mints identifiers: batches, parts, workers, custom ids of bare lines, exported lines."""

from __future__ import annotations

import os
import socket
import uuid


def new_batch_id() -> str:
    """A short random batch id (12 hex digits); commands accept any unique prefix of it."""
    return uuid.uuid4().hex[:12]


def new_part_id() -> str:
    """A Batch API part: 12 random hex digits (its rows are held under `part:<id>`)."""
    return uuid.uuid4().hex[:12]


def new_worker_id() -> str:
    """Names one engine: host, process id and a random suffix (a process may run several engines)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class CustomIds:
    """The custom ids of one job file, as it is read: given ones kept as written, generated ones minted free.

    A line without a custom id (a shorthand body) is `line-<n>`; an invalid line recorded with --skip-invalid
    is `invalid-line-<n>`. A generated id whose natural form was already given on an earlier line takes the
    first free `~2`, `~3`, ... suffix instead (`line-3~2`), so it never clashes. A given id equal to one
    generated for an earlier line cannot be helped (that row may be stored already): `give` returns that line,
    and the reader reports the given one as a duplicate.
    """

    def __init__(self) -> None:
        #: custom id -> the line that holds it; one entry per line, the only state kept per line
        self._lines: dict[str, int] = {}
        self._generated: set[str] = set()

    def give(self, custom_id: str, line: int) -> int | None:
        """Register an id given on `line`; the earlier line that already holds it, or None."""
        first = self._lines.setdefault(custom_id, line)
        return None if first == line else first

    def is_generated(self, custom_id: str) -> bool:
        """Whether the id was minted here rather than given in the file."""
        return custom_id in self._generated

    def for_shorthand(self, line: int) -> str:
        """The id of a shorthand line (a bare request body)."""
        return self._mint(f"line-{line}", line)

    def for_invalid(self, line: int) -> str:
        """The id under which an invalid line is recorded (with --skip-invalid)."""
        return self._mint(f"invalid-line-{line}", line)

    def _mint(self, natural: str, line: int) -> str:
        custom_id, suffix = natural, 1
        # taken only when another line holds it: an invalid line that gave this very id keeps it
        while self._lines.get(custom_id, line) != line:
            suffix += 1
            custom_id = f"{natural}~{suffix}"
        self._lines[custom_id] = line
        self._generated.add(custom_id)
        return custom_id


def openai_request_id(request_id: int) -> str:
    """The Batch API style id of a request in exports: stable, since it derives from the row's key."""
    return f"batch_req_{request_id:032x}"
