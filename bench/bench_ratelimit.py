"""Rate-limit ceiling: how close to a server's limit pipeline runs, with how many 429s.

Starts its own redis-server and `pipeline fake-api` on loopback. The fake enforces RPM (or TPM) in 1-second
buckets with a fixed latency; pipeline is given NO limits and must learn them from the headers. Measures
successes per second over the run divided by the limit, and the share of calls answered 429, for
1 and 4 `pipeline worker` processes sharing the limit through Redis. In the same run, the classic
parallel-processor design (asyncio + aiohttp, throttled to the nominal limit with a request/token
capacity that refills per second, 429s retried after a pause) is the baseline. Run by hand:

    .venv/bin/python bench/bench_ratelimit.py --rpm 6000 --requests 6000
    .venv/bin/python bench/bench_ratelimit.py --tpm 60000 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import orjson
from sqlalchemy import func, select

from pipeline.store import batches as store
from pipeline.store.db import Database, open_database
from pipeline.store.models import Attempt, Request

KEY = "sk-bench-ratelimit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jobs(path: Path, n: int, tag: str) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"{tag} question number {i}"}],
            }
            fh.write(
                orjson.dumps(
                    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
                + b"\n"
            )


def fake_stats(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats") as resp:
        return dict(json.load(resp))


def fake_reset(port: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_fake/reset", method="POST", data=b"")
    urllib.request.urlopen(req).close()


def run_pipeline(workers: int, jobs: Path, tmp: Path, env: dict[str, str], timeout: float) -> float:
    """Seconds from the first request sent to the last one stored."""
    data = tmp / f"data-{workers}"
    env = {**env, "PIPELINE_DATABASE_URL": f"sqlite:///{data / 'p.db'}", "PIPELINE_DATA_DIR": str(data)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", "--loglevel", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(4)
        t0 = time.perf_counter()
        batch = subprocess.run(
            [sys.executable, "-m", "pipeline", "submit", str(jobs)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        db = open_database(env["PIPELINE_DATABASE_URL"])
        while time.perf_counter() - t0 < timeout:
            counts = store.status_counts(db, batch)
            if counts["succeeded"] + counts["failed"] == counts["total"]:
                break
            time.sleep(0.5)
        return send_span(db, batch)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def send_span(db: Database, batch_id: str) -> float:
    """Seconds from the batch's first request sent to its last answer stored."""
    with db.read() as s:
        first = s.scalar(
            select(func.min(Attempt.started_at)).join(Request).where(Request.batch_id == batch_id)
        )
        last = s.scalar(select(func.max(Request.finished_at)).where(Request.batch_id == batch_id))
    assert first is not None and last is not None, "the batch sent nothing"
    return float((last - first).total_seconds())


async def classic(jobs: Path, base_url: str, rpm: int | None, tpm: int | None) -> float:
    """The classic script: capacity refilled continuously at the nominal limit, 429 -> pause 15 s, retry."""
    lines = [orjson.loads(raw) for raw in jobs.read_bytes().splitlines()]
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)
    req_cap, tok_cap = float(rpm or 1e9), float(tpm or 1e12)
    last = time.perf_counter()
    pause_until = 0.0
    pending: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:

        async def call(line: dict[str, object]) -> None:
            nonlocal pause_until
            async with session.post(base_url + "/chat/completions", json=line["body"], headers=headers) as r:
                await r.read()
                if r.status == 429:
                    pause_until = time.perf_counter() + 15
                    queue.put_nowait(line)

        while not queue.empty() or pending:
            now = time.perf_counter()
            req_cap = min(req_cap + (now - last) * (rpm or 1e9) / 60, float(rpm or 1e9))
            tok_cap = min(tok_cap + (now - last) * (tpm or 1e12) / 60, float(tpm or 1e12))
            last = now
            if queue.empty() or now < pause_until:
                await asyncio.sleep(0.001)
                pending = {t for t in pending if not t.done()}
                continue
            line = queue.get_nowait()
            cost = 8 + len(str(line["body"])) // 4
            if req_cap >= 1 and tok_cap >= cost:
                req_cap -= 1
                tok_cap -= cost
                task = asyncio.create_task(call(line))
                pending.add(task)
            else:
                queue.put_nowait(line)
                await asyncio.sleep(0.001)
            pending = {t for t in pending if not t.done()}
    return time.perf_counter() - t0


def report(name: str, n: int, seconds: float, stats: dict[str, object], limit_per_s: float) -> str:
    by_status = dict(stats["by_status"])  # type: ignore[call-overload]
    received = int(stats["received"])  # type: ignore[call-overload]
    r429 = int(by_status.get("429", 0))
    rate = n / seconds
    return (
        f"| {name} | {n} | {seconds:.1f} | {rate:.1f} | {rate / limit_per_s:.3f} | {received} | {r429} | "
        f"{100 * r429 / max(received, 1):.2f}% |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--no-baseline", action="store_true", help="skip the classic script's run")
    args = parser.parse_args()
    if not args.rpm and not args.tpm:
        args.rpm = 6000
    tmp = Path(tempfile.mkdtemp(prefix="bench-rl-"))
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
    fake_cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "fake-api",
        "--port",
        str(api_port),
        "--latency",
        str(args.latency),
        "--window",
        "1",
    ]
    fake_cmd += ["--rpm", str(args.rpm)] if args.rpm else []
    fake_cmd += ["--tpm", str(args.tpm)] if args.tpm else []
    fake = subprocess.Popen(fake_cmd, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{api_port}/v1"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": base_url,
        "PIPELINE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PIPELINE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/1",
    }
    rows = []
    try:
        time.sleep(1.5)
        # Tokens per request as the fake counts them against TPM: ceil(len(content)/4) + max_tokens (8).
        per_req_tokens = sum(math.ceil(len(f"w1 question number {i}") / 4) + 8 for i in range(args.requests))
        per_req_tokens /= args.requests
        limit_per_s = (args.rpm / 60) if args.rpm else (args.tpm / 60 / per_req_tokens)
        for workers in [int(w) for w in args.workers.split(",")]:
            jobs = tmp / f"jobs-{workers}.jsonl"
            write_jobs(jobs, args.requests, f"w{workers}")
            fake_reset(api_port)
            secs = run_pipeline(workers, jobs, tmp, env, timeout=30 * args.requests / limit_per_s)
            rows.append(
                report(
                    f"pipeline, {workers} worker(s)", args.requests, secs, fake_stats(api_port), limit_per_s
                )
            )
        if args.no_baseline:
            return print_rows(args, rows)
        jobs = tmp / "jobs-classic.jsonl"
        write_jobs(jobs, args.requests, "classic")
        fake_reset(api_port)
        secs = asyncio.run(classic(jobs, base_url, args.rpm, args.tpm))
        rows.append(
            report("classic asyncio+aiohttp script", args.requests, secs, fake_stats(api_port), limit_per_s)
        )
    finally:
        fake.terminate()
        redis.terminate()
        fake.wait()
        redis.wait()
    print_rows(args, rows)


def print_rows(args: argparse.Namespace, rows: list[str]) -> None:
    limit = f"RPM {args.rpm}" if args.rpm else f"TPM {args.tpm}"
    print(f"limit: {limit} in 1 s buckets, latency {args.latency}s, {args.requests} requests each")
    print("| run | requests | seconds | successes/s | / limit | calls | 429s | 429 share |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
