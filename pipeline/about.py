"""What the installed package is called, and its version."""

from __future__ import annotations

from functools import cache

#: The distribution's name on the package index (the import package and the command are `pipeline`:
#: "pipeline" on the index is an unrelated project).
DISTRIBUTION = "pipeline-bulk"


def version() -> str:
    """The installed version, or "unknown" in a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


@cache
def user_agent() -> str:
    """What the User-Agent header of every call to an API says."""
    return f"pipeline/{version()}"
