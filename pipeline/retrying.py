"""Calls tried again: a database or Redis failing for a moment, a read the remote API may answer later.

One helper, on tenacity, for every retry outside an HTTP request's own (send/engine.py retries requests):

- which errors: `retry_on` (default `transient`: an error another try may cure, `store.db.is_transient`
  or Redis unreachable); any other is raised at once. `again` also retries on a result (a beat that did
  not get through); when the tries end on such a result, it is returned;
- how long between tries: `backoff`, capped exponential with the official client's 0.75-1.0 jitter (the
  one backoff function: `classify.backoff_delay` adds a server's hints to it), or the caller's `wait`;
- when to stop and raise the last error: after `attempts` tries, once `deadline` seconds passed since the
  first try (e.g. a write that keeps failing pauses its batch instead), or when `give_up()` says so (the
  engine drains); by default never;
- what the log says: one warning line per failure (what, the error's first line, the wait), never a
  traceback; `on_retry` replaces it (`quiet` says nothing, for a call that logs its own failures).

`report` logs the same one line for a task that tries again at its next period instead.

    rows = await retrying.call_async(take, Policy("claiming rows", give_up=lambda: engine.draining))
    retrying.call(lambda: reaper.sweep(), Policy("recovery pass", attempts=3))
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
)
from tenacity.retry import retry_base

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The official client's jitter: each wait is 75% to 100% of its step.
JITTER_FLOOR = 0.75


def backoff(attempt: int, first: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed try number `attempt` (1-based): `first` doubling up to `cap`, times a
    jitter of 0.75-1.0 so that many callers failing together do not come back in lockstep."""
    step: float = min(first * 2.0 ** (attempt - 1), cap)
    return step * (JITTER_FLOOR + (1 - JITTER_FLOOR) * rand())


def transient(exc: BaseException) -> bool:
    """An error trying again may cure: the database restarting, busy, out of connections or disk
    (`store.db.is_transient`), Redis unreachable or timing out, or the broker restarting (kombu's
    OperationalError, which Celery raises for a broker it cannot reach)."""
    from pipeline.store.db import is_transient  # SQLAlchemy loads with the store, not with this module

    if is_transient(exc):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "RedisError" in names and bool(names & {"ConnectionError", "TimeoutError", "BusyLoadingError"}):
        return True
    return type(exc).__module__.startswith("kombu") and "OperationalError" in names


def report(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a failure that a later pass will try again (a periodic task, a fire-and-forget update): one
    line when another try may cure it, the traceback of anything else (most likely a bug)."""
    if transient(exc):
        from pipeline.store.db import first_line

        logger.warning("%s failed (%s: %s); trying again later", what, type(exc).__name__, first_line(exc))
    else:
        logger.warning("%s failed", what, exc_info=exc)


def _never() -> bool:
    return False


def quiet(attempt: int, error: BaseException | None, seconds: float) -> None:
    """An `on_retry` that logs nothing."""


@dataclass(frozen=True)
class Policy:
    """How a call is tried again (see the module docstring)."""

    what: str  #: the call, as the log names it: "claiming rows", "storing outcomes"
    retry_on: Callable[[BaseException], bool] = transient
    again: Callable[[Any], bool] | None = None  #: a result that means "try again" (default: none)
    first: float = 0.5  #: seconds before the second try
    cap: float = 10.0  #: the longest wait between two tries
    attempts: int | None = None  #: tries in all, then the last error is raised
    deadline: float | None = None  #: seconds from the first try, after which the last error is raised
    give_up: Callable[[], bool] = _never  #: asked after each failure: True raises the error at once
    #: seconds to wait after failed try `n` with error `exc` (None: a result to try again on);
    #: default `backoff(n, first, cap)`
    wait: Callable[[int, BaseException | None], float] | None = None
    #: called before each wait with (failed try number, its error or None, seconds to wait); default: one
    #: log line
    on_retry: Callable[[int, BaseException | None, float], None] | None = None

    def delay(self, attempt: int, error: BaseException | None) -> float:
        if self.wait is not None:
            return self.wait(attempt, error)
        return backoff(attempt, self.first, self.cap)

    def warn(self, attempt: int, error: BaseException | None, seconds: float) -> None:
        if self.on_retry is not None:
            self.on_retry(attempt, error, seconds)
            return
        if error is None:
            log.warning("%s: not yet; trying again in %.1fs", self.what, seconds)
            return
        from pipeline.store.db import first_line

        why = f"{type(error).__name__}: {first_line(error)}"
        log.warning("%s failed (%s); trying again in %.1fs", self.what, why, seconds)


def _stopped(policy: Policy, tries: int, started: float) -> bool:
    """Whether no try may follow the `tries` made since `started` (time.monotonic)."""
    if policy.give_up() or (policy.attempts is not None and tries >= policy.attempts):
        return True
    return policy.deadline is not None and time.monotonic() - started >= policy.deadline


def _carry_on(policy: Policy, started: float) -> dict[str, Any]:
    """tenacity's options for the tries after the first (made outside tenacity, which costs ~50 us a call
    even when nothing fails: too much for a call made per request)."""
    retry: retry_base = retry_if_exception(policy.retry_on)
    if policy.again is not None:
        retry = retry | retry_if_result(policy.again)

    def stop(state: RetryCallState) -> bool:
        return _stopped(policy, state.attempt_number + 1, started)

    def wait(state: RetryCallState) -> float:
        return policy.delay(state.attempt_number + 1, _error(state))

    def before_sleep(state: RetryCallState) -> None:
        # next_action, not upcoming_sleep: the latter is newer than the declared floor (tenacity 8.2.3)
        seconds = state.next_action.sleep if state.next_action is not None else 0.0
        policy.warn(state.attempt_number + 1, _error(state), seconds)

    return {
        "retry": retry,
        "stop": stop,
        "wait": wait,
        "before_sleep": before_sleep,
        "retry_error_callback": _last_outcome,
    }


def _error(state: RetryCallState) -> BaseException | None:
    assert state.outcome is not None  # tenacity waits and stops only after a try
    return state.outcome.exception()


def _last_outcome(state: RetryCallState) -> Any:
    """When the tries end: the last error raised, or the last result returned."""
    assert state.outcome is not None
    return state.outcome.result()


def _first_wait(policy: Policy, error: BaseException | None) -> float:
    seconds = policy.delay(1, error)
    policy.warn(1, error, seconds)
    return seconds


def call(fn: Callable[[], T], policy: Policy, *, sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, tried again as `policy` says; its result, or the error that ended the tries."""
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        if not policy.retry_on(exc) or _stopped(policy, 1, started):
            raise
        sleep(_first_wait(policy, exc))
    else:
        if policy.again is None or not policy.again(result) or _stopped(policy, 1, started):
            return result
        sleep(_first_wait(policy, None))
    later: T = Retrying(sleep=sleep, **_carry_on(policy, started))(fn)
    return later


async def call_async(
    fn: Callable[[], Awaitable[T]],
    policy: Policy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`await fn()`, tried again as `policy` says; `sleep` waits between tries (one a drain cuts short)."""
    started = time.monotonic()
    try:
        result = await fn()
    except Exception as exc:
        if not policy.retry_on(exc) or _stopped(policy, 1, started):
            raise
        await sleep(_first_wait(policy, exc))
    else:
        if policy.again is None or not policy.again(result) or _stopped(policy, 1, started):
            return result
        await sleep(_first_wait(policy, None))
    later: T = await AsyncRetrying(sleep=sleep, **_carry_on(policy, started))(fn)
    return later
