"""The circuit breaker: when the API does not answer at all, pause the batch instead of spending its rows.

Every attempt that could not connect, timed out, got a 5xx or a 2xx that is no answer extends the current
streak; any other answer
(a success, a 4xx, a 429) ends it. The breaker trips when the streak holds at least `failures` attempts AND
has lasted at least `seconds`: a dead host or a wrong port trips it within those seconds, while a burst of
5xx at high throughput, over in a moment, does not. The rows in flight keep their attempt budget: they go
back to the queue with the batch paused, and `pipeline resume` sends them afresh.
"""

from __future__ import annotations

import math
import time

from pipeline.errors import APIError, BadResponse


class Breaker:
    """Watches the outcome of every attempt to one base URL."""

    def __init__(self, failures: int, seconds: float) -> None:
        self.failures = failures
        self.seconds = seconds
        self._streak = 0
        self._since = math.inf
        self.last: APIError | None = None

    def observe(self, status: int | None, error: APIError | None) -> bool:
        """Count one attempt; True when the breaker is (still) tripped after it."""
        if not _down(status, error):
            self._streak, self._since, self.last = 0, math.inf, None
            return False
        now = time.monotonic()
        self._streak += 1
        self._since = min(self._since, now)
        self.last = error
        return self._streak >= self.failures and now - self._since >= self.seconds

    def describe(self, base_url: str) -> str:
        """Why the breaker tripped, for the batch's pause reason."""
        seconds = time.monotonic() - self._since if self._streak else 0.0
        last = f" (last: {self.last.message})" if self.last is not None else ""
        return (
            f"the API at {base_url} is not answering: {self._streak} attempts in a row over {seconds:.0f}s "
            f"failed to connect, timed out or got 5xx or no answer{last}"
        )


def _down(status: int | None, error: APIError | None) -> bool:
    """An attempt that says the API did not answer: no connection, no answer in time, a server error, or
    a 2xx that is not an answer (a captive portal, a proxy's page)."""
    if error is None:
        return False
    return status is None or status >= 500 or isinstance(error, BadResponse)
