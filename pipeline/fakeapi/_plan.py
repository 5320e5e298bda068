"""Plan: a request read off the wire, with how to answer it once every check has let it through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._directives import Directive
from ._protocol import Answer, ApiError


@dataclass(frozen=True)
class Plan:
    """A request read off the wire, before any check.

    `respond` validates the request and builds its answer, raising ApiError when it is invalid; it is
    called only once auth, faults, quota and rate limits have let the request through, with the
    request's `directive` when that is in force (else None), and applies the directive's text and model.
    An unmetered plan (an unknown URL) skips faults, quota and rate limits.
    """

    fingerprint: str
    model: str
    tokens: int
    respond: Callable[[Directive | None], Answer]
    metered: bool = True
    directive: Directive | None = None

    @classmethod
    def failing(cls, fingerprint: str, error: ApiError, model: str = "", *, metered: bool = True) -> Plan:
        """A plan whose validation can only fail with `error`."""

        def respond(directive: Directive | None) -> Answer:
            raise error

        return cls(fingerprint, model, 0, respond, metered)
