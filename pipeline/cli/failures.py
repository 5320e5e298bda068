"""What a command prints when it fails: one line when expected; for a bug, one line and a saved traceback.

Expected failures (a PipelineError, the database failing under a command, a closed stdout) are one line on
stderr. Anything else is a bug: one line naming the exception and the file that holds its full traceback
(in the temp directory), unless `pipeline --debug` asked for the traceback itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.about import version
from pipeline.errors import ConnectError
from pipeline.settings import mask_url


def one_line(exc: BaseException) -> str:
    """The first line of what went wrong: the driver's own message for a database error, not SQLAlchemy's."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_database_error(exc: BaseException, name: str = "SQLAlchemyError") -> bool:
    """Whether `exc` is SQLAlchemy's `name` error. Asked without importing SQLAlchemy: a command that never
    loaded it cannot have raised one (and `pipeline --version` stays fast)."""
    module = sys.modules.get("sqlalchemy.exc")
    return module is not None and isinstance(exc, getattr(module, name))


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Opening or migrating the database at `url`: any failure becomes one ConnectError naming it."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, OSError) and not is_database_error(exc):
            raise
        raise ConnectError(f"cannot use database {mask_url(url)}: {one_line(exc)}") from None


def save_traceback(command: str | None) -> str | None:
    """Write the exception being handled, with its traceback, to a new file; its path (None if unwritable)."""
    release = version()
    try:
        fd, path = tempfile.mkstemp(prefix="pipeline-error-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            # never sys.argv: a --database-url flag may carry a password
            fh.write(f"pipeline {release}, command {command or '-'}\n")
            traceback.print_exc(file=fh)
    except OSError:
        return None
    return path


def quiet_stdout() -> None:
    """After a closed pipe (`pipeline export | head`): point stdout at /dev/null so exiting prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (e.g. under a test runner)
        pass
