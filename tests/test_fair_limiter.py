"""Fair share of one key's budget among batches: the arithmetic, both limiters, and the engine's slots.

The limiter cases run on LocalLimiter and on RedisLimiter over a real Redis (tests/test_limiter.py's
fixtures), at 6,000 requests/min given, with senders that always want more than the budget.
"""

from __future__ import annotations

import asyncio
import statistics
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

#: They pace against the clock: scripts/test runs them apart from the parallel phase (tests/README.md).
pytestmark = pytest.mark.timing

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
) -> list[tuple[float, str]]:
    """When each request was granted (seconds from the start) and to which batch, within `seconds`;
    senders: batch -> (weight, start, stop) in seconds, 20 senders per batch, each asking again as soon as
    it is granted."""
    key, granted, t0 = new_key(), list[tuple[float, str]](), time.monotonic()

    async def sender(batch: str, weight: float, start: float, stop: float) -> None:
        await asyncio.sleep(start)  # part of the scenario: when this batch starts asking
        while time.monotonic() - t0 < min(stop, seconds):
            await limiter.acquire(key, 1, batch, weight)
            if (at := time.monotonic() - t0) < min(stop, seconds):
                granted.append((at, batch))

    await asyncio.gather(*(sender(b, *plan) for b, plan in senders.items() for _ in range(20)))
    return sorted(granted)


#: Seconds after the start from which shares are counted: four limiters connecting and loading their scripts
#: on a loaded machine are not the steady share.
STEADY = 1.0


def count(granted: list[tuple[float, str]], since: float = 0.0) -> Counter[str]:
    """Grants per batch from `since` seconds on."""
    return Counter(batch for at, batch in granted if at >= since)


def run(open_limiter: Opener, scenario: Callable[[AnyLimiter], Awaitable[Any]]) -> Any:  # noqa: F811
    async def main() -> Any:
        async with open_limiter(table(rpm=6000)) as limiter:
            return await scenario(limiter)

    return asyncio.run(main())


def test_two_batches_share_a_key_3_to_1(open_limiter: Opener) -> None:  # noqa: F811
    got = count(run(open_limiter, lambda lim: grants(lim, {"a": (3, 0, 9), "b": (1, 0, 9)}, 5.0)), STEADY)
    # Counts over the same window: a ratio, whatever the machine's speed (the throughput of the pair is
    # measured in bench/bench_limiter.py).
    assert 0.8 * 3 <= got["a"] / got["b"] <= 1.2 * 3, got


def test_a_newcomer_gets_its_share_at_once_and_no_more(open_limiter: Opener) -> None:  # noqa: F811
    # "a" alone for 2 s, then "b" joins for 2 s at the same weight.
    granted = run(open_limiter, lambda lim: grants(lim, {"a": (1, 0, 9), "b": (1, 2.0, 9)}, 4.0))
    joined = next(at for at, batch in granted if batch == "b")
    # At once: "a" was not let run on ahead of it by more than a quantum of the budget (and what its 20
    # senders had already asked for); whatever the speed, fewer grants happen in a slower window.
    ahead = sum(1 for at, batch in granted if batch == "a" and 2.0 <= at < joined)
    assert ahead <= QUANTUM * RATE + 20, (ahead, joined)
    # And no more: from then on, the same number of grants as "a", within 20%.
    both = count(granted, since=joined)
    assert 0.8 <= both["b"] / both["a"] <= 1.25, both


def test_a_batch_asking_little_holds_nobody_back(open_limiter: Opener) -> None:  # noqa: F811
    async def timed(batch: str, weight: float, waits: list[float], limiter: AnyLimiter, key: Any) -> None:
        asked = time.monotonic()
        await limiter.acquire(key, 1, batch, weight)
        waits.append(time.monotonic() - asked)

    async def scenario(limiter: AnyLimiter) -> tuple[list[float], list[float]]:
        key, t0, small, big = new_key(), time.monotonic(), list[float](), list[float]()

        async def trickle() -> None:  # a high-priority batch with little to send: 5 requests a second
            while time.monotonic() - t0 < 3.0:
                await timed("small", 10.0, small, limiter, key)
                await asyncio.sleep(0.2)  # part of the scenario: it asks little

        async def flood() -> None:
            while time.monotonic() - t0 < 3.0:
                await timed("big", 1.0, big, limiter, key)

        await asyncio.gather(trickle(), *(flood() for _ in range(20)))
        return small, big

    small, big = run(open_limiter, scenario)
    # Its few requests went out at once: each waited far less than the flood's requests, which queue for the
    # budget (a comparison of waits in the same run, whatever the machine's speed).
    print(f"median waits: small {statistics.median(small):.4f}s, big {statistics.median(big):.4f}s")
    assert len(small) >= 3 and len(big) > len(small), (len(small), len(big))
    assert statistics.median(small) < statistics.median(big) / 4, (small, statistics.median(big))


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

    async def scenario() -> list[tuple[float, str]]:
        key, granted, t0 = new_key(), list[tuple[float, str]](), time.monotonic()
        limiters = [RedisLimiter(limiter_redis_url, table(rpm=6000)) for _ in range(4)]

        async def sender(limiter: RedisLimiter, batch: str) -> None:
            while time.monotonic() - t0 < 5.0:
                await limiter.acquire(key, 1, batch, 1.0)
                if (at := time.monotonic() - t0) < 5.0:
                    granted.append((at, batch))

        plan = [(lim, "many") for lim in limiters[:3]] + [(limiters[3], "one")]
        await asyncio.gather(*(sender(lim, batch) for lim, batch in plan for _ in range(10)))
        for lim in limiters:
            await lim.aclose()
        return granted

    got = count(asyncio.run(scenario()), since=STEADY)
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
