"""The one retry helper (pipeline/retrying.py): which errors, how long, when to stop, what the log says."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest
import redis.exceptions

from pipeline import retrying
from pipeline.retrying import Policy, backoff, call, call_async, transient


class Flaky:
    """Raises each of `errors` in turn, then returns "done"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Clock:
    """time.monotonic for tenacity's deadline, moved only by the waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    return fake


def busy() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database is locked\nand a second line no log should carry")


def test_backoff_doubles_to_its_cap_with_a_jitter_of_three_quarters_to_one() -> None:
    assert [backoff(n, 0.5, 10, rand=lambda: 1.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff(3, 0.5, 10, rand=lambda: 0.0) == 1.5
    assert all(0.75 * 4 <= backoff(4, 0.5, 10) <= 4 for _ in range(100))


def test_transient_errors_are_those_another_try_may_cure() -> None:
    assert transient(busy()) and transient(ConnectionRefusedError())
    assert transient(redis.exceptions.ConnectionError("refused"))
    assert transient(redis.exceptions.TimeoutError("slow")) and transient(redis.exceptions.BusyLoadingError())
    assert not transient(redis.exceptions.ResponseError("WRONGTYPE")) and not transient(ValueError("x"))
    assert not transient(sqlite3.IntegrityError("UNIQUE constraint failed"))


def test_a_transient_error_is_tried_again_with_one_log_line_per_failure(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(busy(), busy())
    with caplog.at_level(logging.WARNING, logger="pipeline.retrying"):
        assert call(flaky, Policy("storing outcomes"), sleep=clock.sleep) == "done"
    assert flaky.calls == 3 and len(clock.waits) == 2
    assert 0.375 <= clock.waits[0] <= 0.5 and 0.75 <= clock.waits[1] <= 1.0
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.exc_info is None and "\n" not in record.getMessage()
        message = record.getMessage()
        assert message.startswith("storing outcomes failed (OperationalError: database is locked)")


def test_other_errors_are_raised_at_once(clock: Clock) -> None:
    flaky = Flaky(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        call(flaky, Policy("x"), sleep=clock.sleep)
    assert flaky.calls == 1 and clock.waits == []


def test_attempts_deadline_and_give_up_end_the_tries_with_the_last_error(clock: Clock) -> None:
    flaky = Flaky(*(busy() for _ in range(9)))
    with pytest.raises(sqlite3.OperationalError):
        call(flaky, Policy("x", attempts=3), sleep=clock.sleep)
    assert flaky.calls == 3

    clock.waits.clear()
    flaky = Flaky(*(busy() for _ in range(99)))
    with pytest.raises(sqlite3.OperationalError):  # the try after 30 s of waits is the last
        call(flaky, Policy("x", deadline=30.0, first=0.5, cap=10.0), sleep=clock.sleep)
    assert sum(clock.waits[:-1]) < 30.0 <= sum(clock.waits) and 6 <= flaky.calls <= 10

    draining = Flaky(*(busy() for _ in range(99)))
    with pytest.raises(sqlite3.OperationalError):
        call(draining, Policy("x", give_up=lambda: draining.calls >= 4), sleep=clock.sleep)
    assert draining.calls == 4


def test_the_caller_may_choose_the_errors_the_wait_and_the_log() -> None:
    seen: list[tuple[int, str, float]] = []
    flaky = Flaky(KeyError("k"), KeyError("k"))
    policy = Policy(
        "x",
        retry_on=lambda e: isinstance(e, KeyError),
        wait=lambda n, e: 0.01 * n,
        on_retry=lambda n, e, s: seen.append((n, type(e).__name__, s)),
    )
    assert call(flaky, policy, sleep=lambda s: None) == "done"
    assert seen == [(1, "KeyError", 0.01), (2, "KeyError", 0.02)]


def test_async_calls_retry_on_results_too_and_return_the_last_when_given_up() -> None:
    answers = iter([False, False, True])
    waits: list[float] = []

    async def proven() -> bool:
        return next(answers)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> tuple[bool, bool]:
        policy = Policy("heartbeat", again=lambda ok: not ok, first=0.25, on_retry=retrying.quiet)
        won = await call_async(proven, policy, sleep=sleep)

        async def never() -> bool:
            return False

        stopped = await call_async(never, Policy("x", again=lambda ok: not ok, attempts=2), sleep=sleep)
        return won, stopped

    assert asyncio.run(main()) == (True, False)
    assert len(waits) == 3 and 0.1875 <= waits[0] <= 0.25


def test_async_errors_are_raised_as_in_sync_calls() -> None:
    async def refused() -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(call_async(refused, Policy("spend budget", attempts=2), sleep=sleep))
