"""The rate limiters' own speed: how much of a budget they hand out, in process, Local and RedisLimiter.

These figures were assertions in tests/test_limiter.py and tests/test_fair_limiter.py; on a loaded machine a
limiter that is right hands out less in a fixed window, so the tests now assert order and ratios and the
throughput is measured here. Starts its own redis-server on loopback. Run by hand:

    .venv/bin/python bench/bench_limiter.py

Scenarios (6,000 RPM given unless said; the limiters aim at 99% of it, RATE below):
- spread: 300 requests by 50 senders through the fake's own meter (100 per 1-second bucket): seconds taken
  (ideal 300 / RATE = 3.0 s) and requests the meter refused (must be 0).
- share 3:1: batches of weight 3 and 1, 20 senders each, 5 s: grants per second / RATE (was >= 0.9).
- newcomer: "a" alone 2 s, then "b" at the same weight 2 s: b's grants / (RATE * 2) (was 0.4-0.6).
- trickle: a weight-10 batch asking 5 a second beside a flood, 3 s: all grants per second / RATE (was >= 0.9).
- after reset: the server says 5 requests remain for 1 s: grants within 2.5 s (was >= 10).
- 3 processes: three processes share 3,000 RPM through Redis for 3 s: grants / (50 * 3) (was >= 0.7).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pipeline.fakeapi import FakeConfig
from pipeline.fakeapi._limits import RateLimiter
from pipeline.fakeapi._protocol import ApiError
from pipeline.ratelimit.local import LocalLimiter
from pipeline.ratelimit.redis import RedisLimiter
from pipeline.ratelimit.rules import MARGIN, LimitKey, Limits, LimitTable

RATE = 6000 * MARGIN / 60
ROOT = Path(__file__).resolve().parents[1]
AnyLimiter = LocalLimiter | RedisLimiter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_key() -> LimitKey:
    return LimitKey("http://api.bench/v1", uuid.uuid4().hex[:12], None, "gpt-4o-mini")


def table(rpm: int | None = None, tpm: int | None = None) -> LimitTable:
    return LimitTable({"*": Limits(rpm, tpm)})


@asynccontextmanager
async def opened(kind: str, url: str, limits: LimitTable) -> AsyncIterator[AnyLimiter]:
    if kind == "local":
        yield LocalLimiter(limits)
        return
    async with RedisLimiter(url, limits) as limiter:
        yield limiter


async def spread(limiter: AnyLimiter) -> str:
    key, server, config, refused = new_key(), RateLimiter(), FakeConfig(rpm=6000, window=1.0), 0

    async def sender() -> None:
        nonlocal refused
        for _ in range(6):
            await limiter.acquire(key, 1)
            try:
                server.admit(config, key.model, 1)
            except ApiError:
                refused += 1

    started = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(50)))
    return f"{time.monotonic() - started:.2f} s, {refused} refused"


async def flood(limiter: AnyLimiter, plan: dict[str, tuple[float, float]], seconds: float) -> Counter[str]:
    """Grants per batch within `seconds`; plan: batch -> (weight, start), 20 senders each."""
    key, got, t0 = new_key(), Counter[str](), time.monotonic()

    async def sender(batch: str, weight: float, start: float) -> None:
        await asyncio.sleep(start)
        while time.monotonic() - t0 < seconds:
            await limiter.acquire(key, 1, batch, weight)
            if time.monotonic() - t0 < seconds:
                got[batch] += 1

    await asyncio.gather(*(sender(b, w, s) for b, (w, s) in plan.items() for _ in range(20)))
    return got


async def share(limiter: AnyLimiter) -> str:
    got = await flood(limiter, {"a": (3, 0), "b": (1, 0)}, 5.0)
    return f"{sum(got.values()) / 5.0 / RATE:.3f} of RATE (a/b {got['a'] / got['b']:.2f})"


async def newcomer(limiter: AnyLimiter) -> str:
    got = await flood(limiter, {"a": (1, 0), "b": (1, 2.0)}, 4.0)
    return f"{got['b'] / (RATE * 2):.3f} of RATE over its 2 s"


async def trickle(limiter: AnyLimiter) -> str:
    key, t0, small = new_key(), time.monotonic(), 0

    async def little() -> None:
        nonlocal small
        while time.monotonic() - t0 < 3.0:
            await limiter.acquire(key, 1, "small", 10.0)
            small += 1
            await asyncio.sleep(0.2)

    async def big() -> int:
        n = 0
        while time.monotonic() - t0 < 3.0:
            await limiter.acquire(key, 1, "big", 1.0)
            n += 1
        return n

    counts = await asyncio.gather(little(), *(big() for _ in range(20)))
    total = small + sum(c for c in counts if c)
    return f"{total / 3.0 / RATE:.3f} of RATE, small got {small}"


async def after_reset(limiter: AnyLimiter) -> str:
    key = new_key()
    await limiter.acquire(key, 1)
    limiter.settle(key, 1, 1, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"})
    if isinstance(limiter, RedisLimiter):
        await limiter.drain()
    started, n = time.monotonic(), 0
    while time.monotonic() - started < 2.5:
        await limiter.acquire(key, 1)
        n += 1
    return f"{n} grants in 2.5 s"


CHILD = """
import asyncio, json, sys, time
from pipeline.ratelimit.redis import RedisLimiter
from pipeline.ratelimit.rules import LimitKey, LimitTable, Limits

url, fingerprint, start = sys.argv[1], sys.argv[2], float(sys.argv[3])


async def main():
    key, granted = LimitKey("http://api.bench/v1", fingerprint, None, "m"), []
    async with RedisLimiter(url, LimitTable({"*": Limits(rpm=3000)})) as limiter:
        await asyncio.sleep(max(0.0, start - time.time()))

        async def sender():
            while time.time() < start + 3.0:
                await limiter.acquire(key, 1)
                granted.append(time.time())

        await asyncio.gather(*(sender() for _ in range(20)))
    print(json.dumps([t for t in granted if t < start + 3.0]))


asyncio.run(main())
"""


def three_processes(url: str) -> str:
    start, fingerprint = time.time() + 5.0, uuid.uuid4().hex[:12]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", CHILD, url, fingerprint, str(start)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    grants = sum(len(json.loads(proc.communicate(timeout=60)[0])) for proc in procs)
    return f"{grants / (50 * 3.0):.3f} of the limit"


SCENARIOS: dict[str, Callable[[AnyLimiter], Awaitable[str]]] = {
    "spread": spread,
    "share 3:1": share,
    "newcomer": newcomer,
    "trickle": trickle,
    "after reset": after_reset,
}


async def run_all(url: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, scenario in SCENARIOS.items():
        for kind in ("local", "redis"):
            limits = table(rpm=6000, tpm=60_000) if name == "after reset" else table(rpm=6000)
            async with opened(kind, url, limits) as limiter:
                rows.append((name, kind, await scenario(limiter)))
    return rows


def main() -> None:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        time.sleep(1.0)
        rows: list[Any] = asyncio.run(run_all(url))
        rows.append(("3 processes", "redis", three_processes(url)))
    finally:
        redis.terminate()
        redis.wait()
    print("| scenario | limiter | figure |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
