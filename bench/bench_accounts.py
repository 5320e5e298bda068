"""Pools of keys and adaptive concurrency: how close to the summed limit a pool runs, and how close to a
self-hosted server's best the adaptive mode gets.

Starts `pipeline fake-api` in its own process on loopback, configured through POST /_fake/config:

- pools of 1, 2 and 4 keys of 6,000 RPM each (each key's limit in 1-second buckets; pipeline is given no
  limit and learns each key's from its headers): `pipeline run --accounts FILE` on SQLite. Figure: the
  median of successes per second over the run (first and last second left out) x 60 / the summed limit,
  and over the middle 80% of the answers; the share of answers that were 429.
- a server without rate-limit headers whose latency rises with load (latency x max(1, in flight /
  capacity), 503 past a queue bound): fixed concurrencies swept (`--max-in-flight N` with a given limit far
  above reach), then the adaptive mode (no limit given). Figure: successes per second, adaptive / best fixed,
  share of 429/503.

Rates come from the fake's own request log (GET /_fake/log). Run by hand:

    .venv/bin/python bench/bench_accounts.py --seconds 30
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

RPM = 6000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(root: str, path: str, data: Any = None) -> Any:
    body = None if data is None else orjson.dumps(data)
    request = urllib.request.Request(root + path, data=body, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return orjson.loads(answer.read())


def write_jobs(path: Path, n: int, tag: str) -> Path:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"{tag} {i}"}],
            }
            fh.write(orjson.dumps(body) + b"\n")
    return path


def figures(log: list[list[Any]], limit_per_second: float | None) -> dict[str, float]:
    ok = sorted(at for at, _, status in log if status == 200)
    seconds = [0] * (int(ok[-1] - ok[0]) + 1)
    for at in ok:
        seconds[int(at - ok[0])] += 1
    median = float(statistics.median(seconds[1:-1]))
    first, last = ok[len(ok) // 10], ok[len(ok) * 9 // 10]
    middle = sum(1 for at in ok if first <= at <= last) / (last - first)
    refused = sum(1 for _, _, status in log if status in (429, 503)) / len(log)
    out = {
        "answers": len(log),
        "median_per_s": median,
        "middle80_per_s": round(middle, 1),
        "refused": refused,
    }
    if limit_per_second:
        out["median_ratio"] = median / limit_per_second
        out["middle80_ratio"] = middle / limit_per_second
    return out


def run(root: str, jobs: Path, data: Path, env: dict[str, str], *args: str) -> None:
    call(root, "/_fake/reset", {})
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(jobs),
        "--endpoint",
        "chat",
        "--force",
        "--data-dir",
        str(data),
    ]
    cmd += args
    subprocess.run(
        cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900
    )


def pools(root: str, tmp: Path, seconds: float) -> None:
    print(
        "| keys | summed RPM | requests | answers | median/s | / limit | middle 80%/s | / limit | 429 share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (1, 2, 4):
        keys = {f"sk-bench-{i}-0123456789abcdef": {"name": f"k{i}", "rpm": RPM} for i in range(n)}
        call(root, "/_fake/config", {"keys": keys, "latency": 0.1, "capacity": None, "queue_limit": None})
        toml = tmp / f"pool{n}.toml"
        toml.write_text(
            "".join(
                f'[[account]]\nname = "k{i}"\napi_key_env = "BENCH_KEY_{i}"\nbase_url = "{root}/v1"\n\n'
                for i in range(n)
            )
        )
        env = {**os.environ, **{f"BENCH_KEY_{i}": key for i, key in enumerate(keys)}}
        requests = int(RPM * n / 60 * seconds)
        run(
            root,
            write_jobs(tmp / f"pool{n}.jsonl", requests, f"pool{n}"),
            tmp / f"d{n}",
            env,
            "--accounts",
            str(toml),
        )
        f = figures(call(root, "/_fake/log"), RPM * n / 60)
        print(
            f"| {n} | {RPM * n:,} | {requests} | {f['answers']} | {f['median_per_s']:.0f} "
            f"| {f['median_ratio']:.3f} | {f['middle80_per_s']:.1f} | {f['middle80_ratio']:.3f} "
            f"| {f['refused']:.2%} |"
        )


def adaptive(root: str, tmp: Path, seconds: float) -> None:
    base, capacity, queue = 0.2, 32, 128
    best_possible = capacity / base
    call(root, "/_fake/config", {"keys": None, "latency": base, "capacity": capacity, "queue_limit": queue})
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-adaptive"}
    requests = int(best_possible * seconds)
    jobs = write_jobs(tmp / "adaptive.jsonl", requests, "adaptive")
    print(f"\nserver: {base}s x max(1, in flight / {capacity}), 503 past {queue} in flight")
    print(f"(at most {best_possible:.0f}/s)")
    print("| mode | in flight | median/s | / server's most | 429/503 share |")
    print("|---|---|---|---|---|")
    rows = []
    for n in (8, 16, 32, 64, 96):
        run(
            root,
            jobs,
            tmp / f"f{n}",
            env,
            "--base-url",
            f"{root}/v1",
            "--max-in-flight",
            str(n),
            "--rpm",
            "10000000",
        )
        f = figures(call(root, "/_fake/log"), None)
        rows.append((n, f))
        share = f["median_per_s"] / best_possible
        print(f"| fixed | {n} | {f['median_per_s']:.0f} | {share:.3f} | {f['refused']:.2%} |")
    run(root, jobs, tmp / "adaptive", env, "--base-url", f"{root}/v1", "--max-in-flight", "512")
    f = figures(call(root, "/_fake/log"), None)
    best = max(r["median_per_s"] for _, r in rows)
    share = f["median_per_s"] / best_possible
    print(f"| adaptive | (<= 512) | {f['median_per_s']:.0f} | {share:.3f} | {f['refused']:.2%} |")
    print(f"adaptive / best fixed of the sweep: {f['median_per_s'] / best:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each run at its limit")
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                call(root, "/_fake/stats")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as tmp:
            pools(root, Path(tmp), args.seconds)
            adaptive(root, Path(tmp), args.seconds)
    finally:
        fake.terminate()
        fake.wait(timeout=30)


if __name__ == "__main__":
    main()
