"""Overhead: pipeline's whole path vs a bare asyncio + aiohttp loop, against a zero-latency fake API.

Both send the same N chat requests to the same `pipeline fake-api` process (started here, on loopback).
The baseline is the classic parallel-processor design: read the JSONL, POST with bounded concurrency,
append each response to a JSONL file. pipeline runs `pipeline run FILE` (validate, store, claim, send,
classify, parse, persist every attempt and result in SQLite). Run by hand:

    .venv/bin/python bench/bench_overhead.py --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

KEY = "sk-bench-overhead"


def write_jobs(path: Path, n: int) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
            }
            fh.write(orjson.dumps(line) + b"\n")


async def baseline(jobs: Path, out: Path, base_url: str, concurrency: int) -> int:
    """The bare loop: no database, no retries beyond none, one file of responses."""
    lines = [orjson.loads(raw) for raw in jobs.read_bytes().splitlines()]
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    done = 0
    with open(out, "wb") as sink:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def worker() -> None:
                nonlocal done
                while not queue.empty():
                    line = queue.get_nowait()
                    async with session.post(
                        base_url + "/chat/completions", data=orjson.dumps(line["body"]), headers=headers
                    ) as resp:
                        body = await resp.read()
                    sink.write(
                        orjson.dumps({"custom_id": line["custom_id"], "response": orjson.loads(body)}) + b"\n"
                    )
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--port", type=int, default=18999)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, args.requests)
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(args.port)], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.5)
        base_url = f"http://127.0.0.1:{args.port}/v1"
        t0 = time.perf_counter()
        n = asyncio.run(baseline(jobs, tmp / "out.jsonl", base_url, args.concurrency))
        base_s = time.perf_counter() - t0
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
            "OPENAI_API_KEY": KEY,
            "PIPELINE_DATA_DIR": str(tmp / "data"),
        }
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "run",
                str(jobs),
                "--base-url",
                base_url,
                "--max-in-flight",
                str(args.concurrency),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ours_s = time.perf_counter() - t0
    finally:
        fake.terminate()
        fake.wait()
    print(f"requests: {args.requests}, concurrency {args.concurrency}")
    print(f"baseline (asyncio+aiohttp -> JSONL): {base_s:.2f} s, {n / base_s:.0f} req/s")
    print(
        f"pipeline run (validate, store, send, persist): {ours_s:.2f} s, {args.requests / ours_s:.0f} req/s"
    )
    print(f"ratio pipeline/baseline throughput: {base_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
