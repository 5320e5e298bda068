"""Latency hiding: with 2 s per call and no rate limit, how many requests one process keeps in flight.

Starts `pipeline fake-api --latency 2` on loopback, runs `pipeline run` on N requests, and reads the
fake's high-water mark of concurrent requests (`max_in_flight` in /_fake/stats). Run by hand:

    .venv/bin/python bench/bench_inflight.py --requests 3000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--max-in-flight", type=int, default=512)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-inflight-"))
    jobs = tmp / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(args.requests):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {i}"}]}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(orjson.dumps(line) + b"\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(port), "--latency", str(args.latency)],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env.update(OPENAI_API_KEY="sk-bench", PIPELINE_DATA_DIR=str(tmp / "data"))
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "run",
                str(jobs),
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--max-in-flight",
                str(args.max_in_flight),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats") as resp:
            stats = json.load(resp)
    finally:
        fake.terminate()
        fake.wait()
    print(f"requests {args.requests}, latency {args.latency}s, --max-in-flight {args.max_in_flight}")
    print(f"max concurrent at the server: {stats['max_in_flight']}, answered {stats['answered']}")
    print(f"wall time {seconds:.1f} s")
    print(f"throughput {args.requests / seconds:.0f} req/s (ideal {args.max_in_flight / args.latency:.0f})")


if __name__ == "__main__":
    main()
