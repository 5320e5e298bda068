"""A self-hosted server without rate-limit headers whose latency rises with load: concurrency adapts to it.

The fake answers in `latency x max(1, in flight / capacity)` seconds, refuses with 503 beyond a queue
bound, and sends no x-ratelimit-* header (no rpm or tpm set). Its throughput is in_flight / latency: it grows
with the requests in flight up to `capacity` (the knee) and stays flat after, until the queue bound. The best
fixed concurrency is found by sweeping in the test, with small numbers (`--max-in-flight` N with a given
limit far above what is reached, so the limiter never paces and N is what is in flight); the adaptive mode
(no limit given) must reach at least 0.9 of it with at most 1% of 429/503 answers. Throughput is read from
the fake's own log: the median of successes per second, the first and last second left out.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from pipeline.fakeapi import FakeConfig, FakeServer
from tests.conftest import TEST_KEY
from tests.fair_helpers import short_chat_file

pytestmark = pytest.mark.integration

#: The server: 0.2 s per answer up to 16 in flight, slower beyond, 503 past 64.
BASE, CAPACITY, QUEUE = 0.2, 16, 64
ROWS = 600


def _run(server: FakeServer, jobs: Path, *args: str) -> tuple[float, float]:
    """Send `jobs` with `pipeline run`; (successes per second, share of 429/503) at the fake."""
    urllib.request.urlopen(urllib.request.Request(_root(server) + "/_fake/reset", method="POST"), timeout=30)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(jobs), "--force", "--base-url", server.url, *args],
        env={**os.environ, "OPENAI_API_KEY": TEST_KEY},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with urllib.request.urlopen(_root(server) + "/_fake/log", timeout=30) as answer:
        log = orjson.loads(answer.read())
    ok = sorted(at for at, _, status in log if status == 200)
    seconds = [0] * (int(ok[-1] - ok[0]) + 1)
    for at in ok:
        seconds[int(at - ok[0])] += 1
    refused = sum(1 for _, _, status in log if status in (429, 503))
    return float(statistics.median(seconds[1:-1])), refused / len(log)


def _root(server: FakeServer) -> str:
    return server.url.removesuffix("/v1")


def test_adaptive_concurrency_settles_near_the_knee_of_a_server_slowed_by_load(tmp_path: Path) -> None:
    config = FakeConfig(api_key=TEST_KEY, latency=BASE, capacity=CAPACITY, queue_limit=QUEUE, seed=1)
    with FakeServer(config) as server:
        jobs = short_chat_file(tmp_path / "jobs.jsonl", ROWS, "adaptive")
        fixed = {
            n: _run(server, jobs, "--max-in-flight", str(n), "--rpm", "10000000") for n in (8, CAPACITY, 48)
        }
        adaptive, refused = _run(server, jobs, "--max-in-flight", "512")
    best = max(rate for rate, _ in fixed.values())
    sweep = ", ".join(f"{n}: {rate:.0f}/s" for n, (rate, _) in fixed.items())
    share = adaptive / best
    print(f"fixed {sweep}; adaptive {adaptive:.0f}/s = {share:.3f} of the best, 429/503 {refused:.2%}")
    assert fixed[8][0] < fixed[CAPACITY][0]  # the sweep sees the knee
    assert adaptive >= 0.9 * best and refused <= 0.01
