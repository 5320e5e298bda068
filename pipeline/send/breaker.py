"""The circuit breaker: when the API does not answer at all, pause the batch instead of spending its rows.

Every attempt that could not connect, timed out, got a 5xx or a 2xx that is no answer extends the current
streak; any other answer (a success, a 4xx, a 429) ends it. `trips` is the rule, in one pure function:

- a long outage: the streak holds at least `failures` attempts AND has lasted at least `seconds` (a dead
  host or a wrong port trips it within those seconds; a burst of 5xx at high throughput, over in a moment,
  does not);
- an outage about to cost a row: a row is about to use its last attempt (its next one would be its
  `max_attempts`-th), every attempt it made failed inside this streak, and the streak spans at least
  MIN_ROWS rows. A server answering every request 503 with `Retry-After: 1` spends 10 attempts in about
  10 s, long before 20 s; this trips before the first row runs out, whatever the server asks to wait. A
  row whose failures began while others were answered (a request the server cannot handle, late in a
  batch) is the row's own problem: it fails as it would without the breaker.

The rows in flight keep their attempt budget: they go back to the queue with the batch paused, and
`pipeline resume` sends them afresh.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from pipeline.errors import APIError, BadResponse

#: Rows a streak must span before a row's last attempt trips it: one row failing alone is as likely its
#: own problem as the server's.
MIN_ROWS = 2


@dataclass(frozen=True, slots=True)
class Streak:
    """The attempts in a row, across the engine's rows, that got no answer, as of the latest one."""

    attempts: int  #: attempts in the streak
    rows: int  #: distinct rows among them
    seconds: float  #: from the first of them to the latest
    attempt: int  #: the latest attempt's number for its row (1 = its first)
    all_inside: bool  #: every attempt of the latest attempt's row failed inside this streak


def trips(streak: Streak, failures: int, seconds: float, max_attempts: int) -> bool:
    """The breaker's rule (see the module docstring)."""
    if streak.attempts >= failures and streak.seconds >= seconds:
        return True
    last_chance = streak.attempt >= max_attempts - 1  # its next attempt would be its last
    return last_chance and streak.all_inside and streak.rows >= MIN_ROWS


class Breaker:
    """Watches the outcome of every attempt to one base URL."""

    def __init__(self, failures: int, seconds: float, max_attempts: int) -> None:
        self.failures = failures
        self.seconds = seconds
        self.max_attempts = max_attempts
        self._streak = 0
        self._since = math.inf
        #: rows seen in the streak -> whether their first attempt in it was their first attempt at all
        self._rows: dict[int, bool] = {}
        self._tripped = False
        self.last: APIError | None = None

    def observe(self, row: int, attempt: int, status: int | None, error: APIError | None) -> bool:
        """Count attempt number `attempt` of row `row`; True when the breaker is (still) tripped after it."""
        if not _down(status, error):
            self._streak, self._since, self.last, self._tripped = 0, math.inf, None, False
            self._rows.clear()
            return False
        now = time.monotonic()
        self._streak += 1
        self._since = min(self._since, now)
        self._rows.setdefault(row, attempt == 1)
        self.last = error
        streak = Streak(self._streak, len(self._rows), now - self._since, attempt, self._rows[row])
        self._tripped = self._tripped or trips(streak, self.failures, self.seconds, self.max_attempts)
        return self._tripped

    def describe(self, base_url: str) -> str:
        """Why the breaker tripped, for the batch's pause reason."""
        seconds = time.monotonic() - self._since if self._streak else 0.0
        last = f" (last: {self.last.message})" if self.last is not None else ""
        return (
            f"the API at {base_url} is not answering: {self._streak} attempts in a row over {seconds:.0f}s "
            f"by {len(self._rows)} requests failed to connect, timed out or got 5xx or no answer{last}"
        )


def _down(status: int | None, error: APIError | None) -> bool:
    """An attempt that says the API did not answer: no connection, no answer in time, a server error, or
    a 2xx that is not an answer (a captive portal, a proxy's page)."""
    if error is None:
        return False
    return status is None or status >= 500 or isinstance(error, BadResponse)
