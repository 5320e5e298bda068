"""Fair share of one key's budget among batches: the arithmetic, both limiters, and the engine's slots.

The limiter cases run on LocalLimiter and on RedisLimiter over a real Redis (tests/test_limiter.py's
fixtures), at 6,000 requests/min given, with senders that always want more than the budget.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.ratelimit.fair import QUANTUM, FairShare, request_cost
from pipeline.ratelimit.redis import RedisLimiter
from pipeline.send.backlog import Backlog
from pipeline.send.slots import Slots
from tests.test_limiter import (  # noqa: F401 (fixtures)
    AnyLimiter,
    Opener,
    limiter_redis_url,
    new_key,
    open_limiter,
    snap,
    table,
)

#: The budget the limiters aim at under rpm=6000 (they keep 1% margin), per second.
RATE = 6000 * 0.99 / 60


# --- the arithmetic -------------------------------------------------------------------------------------


def test_request_cost_is_the_larger_of_its_request_and_its_tokens() -> None:
    assert request_cost(100.0, None, 500, None) == pytest.approx(0.01)
    assert request_cost(100.0, 1000.0, 50, 60_000) == pytest.approx(0.05)
    assert request_cost(None, 1000.0, 10**9, 60_000) == pytest.approx(60.0)  # clipped to a minute's worth
    assert request_cost(None, None, 50, None) == 0.0  # no limits: nothing to share


def test_a_batch_ahead_of_a_waiting_one_waits_and_a_newcomer_joins_the_line() -> None:
    fair, cost = FairShare(), 0.01
    for _ in range(50):  # "a" alone: its tag runs on
        assert fair.wait(0.0, "a", cost) == 0.0
        fair.granted(0.0, "a", cost, 1.0)
    assert fair.wait(1.0, "b", cost) == 0.0  # "b" joins at most QUANTUM behind "a"
    assert fair.askers["b"].tag >= fair.askers["a"].tag - QUANTUM - 1e-9
    fair.waiting(1.0, "b", 0.01)  # told to wait for the budget: "b" now waits
    for _ in range(20):  # "a" may run QUANTUM ahead of the waiting "b", then waits
        if fair.wait(1.0, "a", cost):
            break
        fair.granted(1.0, "a", cost, 1.0)
    assert fair.askers["a"].tag - fair.askers["b"].tag > QUANTUM
    assert fair.wait(1.0, "a", cost) > 0
    assert fair.wait(2.0, "a", cost) == 0.0  # "b" stopped asking: it holds "a" back no longer


def test_idle_batches_are_forgotten() -> None:
    fair = FairShare()
    fair.wait(0.0, "old", 0.01)
    fair.wait(1000.0, "new", 0.01)
    assert set(fair.askers) == {"new"}


# --- both limiters --------------------------------------------------------------------------------------


async def grants(
    limiter: AnyLimiter, senders: dict[str, tuple[float, float, float]], seconds: float
) -> Counter[str]:
    """Requests granted per batch within `seconds`; senders: batch -> (weight, start, stop) in seconds,
    20 senders per batch, each asking again as soon as it is granted."""
    key, granted, t0 = new_key(), Counter[str](), time.monotonic()

    async def sender(batch: str, weight: float, start: float, stop: float) -> None:
        await asyncio.sleep(start)
        while time.monotonic() - t0 < min(stop, seconds):
            await limiter.acquire(key, 1, batch, weight)
            if time.monotonic() - t0 < min(stop, seconds):
                granted[batch] += 1

    await asyncio.gather(*(sender(b, *plan) for b, plan in senders.items() for _ in range(20)))
    return granted


def run(open_limiter: Opener, scenario: Callable[[AnyLimiter], Awaitable[Any]]) -> Any:  # noqa: F811
    async def main() -> Any:
        async with open_limiter(table(rpm=6000)) as limiter:
            return await scenario(limiter)

    return asyncio.run(main())


def test_two_batches_share_a_key_3_to_1(open_limiter: Opener) -> None:  # noqa: F811
    got = run(open_limiter, lambda lim: grants(lim, {"a": (3, 0, 9), "b": (1, 0, 9)}, 4.0))
    assert 0.8 * 3 <= got["a"] / got["b"] <= 1.2 * 3, got
    assert got["a"] + got["b"] >= 0.9 * RATE * (4.0 - 0.25), got  # the bucket starts empty


def test_a_newcomer_gets_its_share_at_once_and_no_more(open_limiter: Opener) -> None:  # noqa: F811
    # "a" alone for 2 s, then "b" joins for 2 s at the same weight.
    got = run(open_limiter, lambda lim: grants(lim, {"a": (1, 0, 9), "b": (1, 2.0, 9)}, 4.0))
    assert 0.4 * RATE * 2 <= got["b"] <= 0.6 * RATE * 2 + 10, got  # half of its 2 s, within a quantum


def test_a_batch_asking_little_holds_nobody_back(open_limiter: Opener) -> None:  # noqa: F811
    async def scenario(limiter: AnyLimiter) -> tuple[Counter[str], int]:
        key, t0, trickled = new_key(), time.monotonic(), 0

        async def trickle() -> None:  # a high-priority batch with little to send: 5 requests a second
            nonlocal trickled
            while time.monotonic() - t0 < 3.0:
                await limiter.acquire(key, 1, "small", 10.0)
                trickled += 1
                await asyncio.sleep(0.2)

        async def flood() -> Counter[str]:
            got = Counter[str]()
            while time.monotonic() - t0 < 3.0:
                await limiter.acquire(key, 1, "big", 1.0)
                got["big"] += 1
            return got

        floods = await asyncio.gather(trickle(), *(flood() for _ in range(20)))
        return sum((c for c in floods[1:] if c), Counter[str]()), trickled

    got, trickled = run(open_limiter, scenario)
    assert trickled >= 12  # its few requests went out at once
    assert got["big"] + trickled >= 0.9 * RATE * (3.0 - 0.25), (got, trickled)  # the rest went to "big"


def test_snapshots_show_each_batch_send_rate(open_limiter: Opener) -> None:  # noqa: F811
    async def scenario(limiter: AnyLimiter) -> tuple[dict[str, Any], bool]:
        key = new_key()
        for _ in range(20):
            await limiter.acquire(key, 1, "a", 1.0)
        for _ in range(10):
            await limiter.acquire(key, 1, "b", 1.0)
        await limiter.acquire(key, 1)  # no batch: only the key's rate
        return await snap(limiter, key), isinstance(limiter, RedisLimiter)

    state, is_redis = run(open_limiter, scenario)
    assert set(state["batch_rpm"]) == {"a", "b"}
    assert state["batch_rpm"]["a"] == pytest.approx(2 * state["batch_rpm"]["b"], rel=0.05)
    assert state["shared"] is is_redis  # Redis sees every process's sends; a local limiter its own


def test_redis_snapshot_is_shared(limiter_redis_url: str) -> None:  # noqa: F811
    async def scenario() -> dict[str, Any]:
        key = new_key()
        async with RedisLimiter(limiter_redis_url, table(rpm=6000)) as one:
            await one.acquire(key, 1, "a", 2.0)
        async with RedisLimiter(limiter_redis_url, table(rpm=6000)) as other:
            return await other.snapshot(key)  # another process sees what the first sent

    state = asyncio.run(scenario())
    assert state["shared"] is True and state["batch_rpm"]["a"] > 0


def test_a_batch_share_does_not_grow_with_the_processes_sending_it(limiter_redis_url: str) -> None:  # noqa: F811
    """Three limiters (three processes' worth) send batch "many", one sends "one": equal shares."""

    async def scenario() -> Counter[str]:
        key, granted, t0 = new_key(), Counter[str](), time.monotonic()
        limiters = [RedisLimiter(limiter_redis_url, table(rpm=6000)) for _ in range(4)]

        async def sender(limiter: RedisLimiter, batch: str) -> None:
            while time.monotonic() - t0 < 4.0:
                await limiter.acquire(key, 1, batch, 1.0)
                if time.monotonic() - t0 < 4.0:
                    granted[batch] += 1

        plan = [(lim, "many") for lim in limiters[:3]] + [(limiters[3], "one")]
        await asyncio.gather(*(sender(lim, batch) for lim, batch in plan for _ in range(10)))
        for lim in limiters:
            await lim.aclose()
        return granted

    got = asyncio.run(scenario())
    assert 0.8 <= got["many"] / got["one"] <= 1.25, got


# --- the engine's slots and backlog -----------------------------------------------------------------------


def test_a_freed_slot_goes_to_the_batch_holding_fewest_for_its_weight() -> None:
    async def scenario() -> list[str]:
        slots, order = Slots(2), []
        release = asyncio.Event()

        async def hold(group: str, weight: float) -> None:
            async with slots.take(group, weight):
                order.append(group)
                await release.wait()

        first = [asyncio.create_task(hold("big", 1.0)) for _ in range(2)]
        await asyncio.sleep(0)
        later = [asyncio.create_task(hold("big", 1.0)) for _ in range(3)]
        later.append(asyncio.create_task(hold("small", 1.0)))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*first, *later)
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["big", "big"]
    assert order[2] == "small"  # ahead of the three "big" that waited before it


def test_the_backlog_counts_rows_per_batch_and_wakes_a_waiter() -> None:
    async def scenario() -> tuple[bool, bool, dict[str, int]]:
        backlog = Backlog(asyncio.Event())
        for i in range(3):
            backlog.add(i, "a")
        backlog.add(3, "b")
        full = await backlog.below(4, timeout=0.05)  # nothing moves: times out
        asyncio.get_running_loop().call_later(0.05, backlog.passed, 0)
        room = await backlog.below(4, timeout=5)
        return full, room, backlog.per_batch()

    full, room, per_batch = asyncio.run(scenario())
    assert (full, room, per_batch) == (False, True, {"a": 2, "b": 1})
