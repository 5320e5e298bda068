"""Fair share with real processes, measured: how much of the limit batches sharing a key use, in every mode.

These figures were assertions in tests/test_fair_fleet.py; on a loaded machine a right fleet sends less in a
fixed time, so the tests now assert order (the small batch finishes first) and ratios (3:1), and the speed
is measured here. Starts its own redis-server and `pipeline fake-api` (6,000 RPM enforced as 100 per
1-second bucket, 0.3 s latency) on loopback. Run by hand:

    .venv/bin/python bench/bench_fairfleet.py

- big + small: 2 workers; 3,000 requests, then (once 200 are answered) 300 more in a second batch. Each
  batch's seconds from its submit to its last answer, and the pair's successes per second / the limit (the
  test asserted small <= 10 s and >= 0.95 of the limit).
- 3:1 in three modes (fleet over Redis; two `pipeline run` sharing a Redis limiter; the filesystem broker,
  each worker given half the limit): priority 3 (1,500 requests) and priority 1 (1,000) at once. Their
  send rates while both sent (1 s trimmed at each end), the ratio, and the sum / the limit (the test
  asserted >= 0.9).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

KEY = "sk-bench-fairfleet"
PER_SECOND = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jobs(path: Path, prefix: str, n: int) -> Path:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"{prefix} q{i}"}],
            }
            line = {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            fh.write(orjson.dumps(line) + b"\n")
    return path


class Bench:
    """One scenario's processes and database; everything started is stopped by `close`."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str]) -> None:
        data = tmp / name
        self.db_url = f"sqlite:///{data / 'p.db'}"
        self.env = {**env, "PIPELINE_DATABASE_URL": self.db_url, "PIPELINE_DATA_DIR": str(data)}
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def workers(self, n: int, *args: str) -> None:
        for _ in range(n):
            self.spawn("worker", "--loglevel", "WARNING", *args)
        time.sleep(6)  # a benchmark, not a test: time for the workers to start consuming

    def submit(self, path: Path, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "submit", str(path), *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.split()[-1]

    def query(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def wait_done(self, batch_ids: list[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query("SELECT count(*) FROM requests WHERE status IN ('queued', 'running')")
            if rows[0][0] == 0 and len(self.finished(batch_ids)) == len(batch_ids):
                return
            time.sleep(0.5)
        raise SystemExit(f"batches not done within {timeout}s")

    def finished(self, batch_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
        """batch -> (created_at, finished_at), for those finished."""
        rows = self.query("SELECT id, created_at, finished_at FROM batches WHERE finished_at IS NOT NULL")
        return {r[0]: (when(r[1]), when(r[2])) for r in rows if r[0] in batch_ids}  # type: ignore[misc]

    def sends(self, batch_id: str) -> list[float]:
        rows = self.query(
            "SELECT a.started_at FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.batch_id = :b ORDER BY a.started_at",
            b=batch_id,
        )
        return [when(r[0]).timestamp() for r in rows]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def when(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def answered(api_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/_fake/stats") as resp:
        return int(json.load(resp)["answered"])


def big_and_small(bench: Bench, tmp: Path, api_port: int) -> str:
    bench.workers(2)
    start = answered(api_port)
    big = bench.submit(write_jobs(tmp / "big.jsonl", "big", 3000))
    while answered(api_port) - start < 200:
        time.sleep(0.1)
    small = bench.submit(write_jobs(tmp / "small.jsonl", "small", 300))
    bench.wait_done([big, small])
    done = bench.finished([big, small])
    span = max(d for _, d in done.values()).timestamp() - bench.sends(big)[0]
    seconds = {b: (d - c).total_seconds() for b, (c, d) in done.items()}
    return (
        f"small {seconds[small]:.1f} s, big {seconds[big]:.1f} s after their submits; "
        f"{3300 / span / PER_SECOND:.3f} of the limit"
    )


def three_to_one(bench: Bench, tmp: Path, mode: str) -> str:
    high_jobs, low_jobs = (
        write_jobs(tmp / "high.jsonl", "high", 1500),
        write_jobs(tmp / "low.jsonl", "low", 1000),
    )
    if mode == "runs":
        runs = [bench.spawn("run", str(high_jobs), "--priority", "3"), bench.spawn("run", str(low_jobs))]
        high, low = (proc.communicate(timeout=300)[0].split()[-1] for proc in runs)
    else:
        bench.workers(2, *(["--rpm", "3000"] if mode == "filesystem" else []))
        low = bench.submit(low_jobs, "--priority", "1")
        high = bench.submit(high_jobs, "--priority", "3")
        bench.wait_done([high, low])
    a, b = bench.sends(high), bench.sends(low)
    start, end = max(a[0], b[0]) + 1.0, min(a[-1], b[-1]) - 1.0
    fast = sum(1 for t in a if start <= t < end) / (end - start)
    slow = sum(1 for t in b if start <= t < end) / (end - start)
    return (
        f"{fast:.1f}/s and {slow:.1f}/s over {end - start:.0f} s: ratio {fast / slow:.2f}, "
        f"{(fast + slow) / PER_SECOND:.3f} of the limit"
    )


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ff-"))
    redis_port, api_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(api_port), "--latency", "0.3"]
        + ["--window", "1", "--rpm", "6000", "--api-key", KEY],
        stderr=subprocess.DEVNULL,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))}
    base |= {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{api_port}/v1"}
    redis_url = f"redis://127.0.0.1:{redis_port}"
    modes = {
        "big + small (fleet)": {"PIPELINE_BROKER_URL": f"{redis_url}/0"},
        "3:1 fleet over Redis": {"PIPELINE_BROKER_URL": f"{redis_url}/1"},
        "3:1 two runs, Redis limiter": {"PIPELINE_REDIS_URL": f"{redis_url}/2"},
        "3:1 filesystem broker": {},
    }
    rows = []
    try:
        time.sleep(2)
        for i, (name, extra) in enumerate(modes.items()):
            bench = Bench(tmp, f"s{i}", {**base, **extra})
            scenario_tmp = tmp / f"jobs{i}"
            scenario_tmp.mkdir()
            try:
                if name.startswith("big"):
                    rows.append((name, big_and_small(bench, scenario_tmp, api_port)))
                else:
                    mode = "runs" if "runs" in name else "filesystem" if "filesystem" in name else "fleet"
                    rows.append((name, three_to_one(bench, scenario_tmp, mode)))
            finally:
                bench.close()
    finally:
        for proc in (fake, redis):
            proc.terminate()
            proc.wait()
    print("| scenario | figures |\n|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
