"""Fair share: batches of mixed sizes submitted at random times to one fleet sharing one key.

Starts its own redis-server, `pipeline fake-api` (the limit enforced in 1-second buckets) and `pipeline
worker` processes, then submits N batches of mixed sizes at random times (seeded). Reports, per batch, its
completion time (from its submit to its last answer stored) against its ideal under fair share (a fluid
model: every batch with work left gets the limit in proportion to its priority from the moment it is
submitted) and against first in, first out (each batch after the ones before it, at the full limit); and
the whole run's use of the limit and its 429s. With --baseline-src, the same schedule runs again with the
pipeline package of another checkout (e.g. main exported with `git archive main | tar -x -C DIR`), so
"before" is measured, not assumed. Run by hand:

    .venv/bin/python bench/bench_fairshare.py --batches 8 --seed 1
    .venv/bin/python bench/bench_fairshare.py --batches 8 --seed 1 --baseline-src /tmp/main-src
    .venv/bin/python bench/bench_fairshare.py --batches 6 --seed 2 --priorities 1,3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

KEY = "sk-bench-fairshare"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_stats(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats") as resp:
        return dict(json.load(resp))


def fake_reset(port: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_fake/reset", method="POST", data=b"")
    urllib.request.urlopen(req).close()


@dataclass
class Planned:
    name: str
    size: int
    priority: int
    at: float  #: seconds after the first submit


@dataclass
class Measured:
    submitted: datetime
    first_sent: datetime
    done: datetime
    succeeded: int


def plan(batches: int, seed: int, spread: float, sizes: list[int], priorities: list[int]) -> list[Planned]:
    rng = random.Random(seed)
    times = sorted([0.0] + [rng.uniform(0, spread) for _ in range(batches - 1)])
    return [
        Planned(f"b{i}", rng.choice(sizes), rng.choice(priorities), round(t, 1)) for i, t in enumerate(times)
    ]


def fair_ideal(batches: list[Planned], rate: float) -> list[float]:
    """Completion times (from each submit) under weighted fair sharing of `rate` (a fluid model)."""
    left = [float(b.size) for b in batches]
    finish = [0.0] * len(batches)
    now = 0.0
    while any(left):
        active = [i for i, b in enumerate(batches) if b.at <= now + 1e-9 and left[i] > 0]
        arrivals = [b.at for i, b in enumerate(batches) if b.at > now + 1e-9]
        if not active:
            now = min(arrivals)
            continue
        weight = sum(batches[i].priority for i in active)
        speed = {i: rate * batches[i].priority / weight for i in active}
        step = min(left[i] / speed[i] for i in active)
        if arrivals:
            step = min(step, min(arrivals) - now)
        for i in active:
            left[i] = max(0.0, left[i] - speed[i] * step)
            if left[i] < 1e-6:
                left[i], finish[i] = 0.0, now + step - batches[i].at
        now += step
    return finish


def fifo_ideal(batches: list[Planned], rate: float) -> list[float]:
    """Completion times (from each submit) when batches are served one after the other at `rate`."""
    end, out = 0.0, []
    for b in batches:
        end = max(end, b.at) + b.size / rate
        out.append(end - b.at)
    return out


def write_jobs(path: Path, name: str, n: int) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"{name} {i}"}],
            }
            line = {"custom_id": f"{name}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(orjson.dumps(line) + b"\n")


def run_fleet(
    batches: list[Planned],
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    tag: str,
    src: str | None,
) -> dict[str, Measured]:
    """Submit the batches on schedule to fresh workers; returns what each batch did, by name."""
    data = tmp / f"data-{tag}"
    db_url = f"sqlite:///{data / 'p.db'}"
    env = {**env, "PIPELINE_DATABASE_URL": db_url, "PIPELINE_DATA_DIR": str(data)}
    if src:
        env["PYTHONPATH"] = src
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", "--loglevel", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=src or None,
        )
        for _ in range(args.workers)
    ]
    ids: dict[str, str] = {}
    try:
        time.sleep(5)
        t0 = time.monotonic()
        for b in batches:
            time.sleep(max(0.0, b.at - (time.monotonic() - t0)))
            jobs = tmp / f"{tag}-{b.name}.jsonl"
            write_jobs(jobs, f"{tag}-{b.name}", b.size)
            extra = ["--priority", str(b.priority)] if b.priority != 1 else []
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", "submit", str(jobs), *extra],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                cwd=src or None,
            )
            ids[b.name] = done.stdout.split()[-1]
        return wait_measured(db_url, ids, timeout=30 * sum(b.size for b in batches) / (args.rpm / 60))
    finally:
        for p in workers:
            os.killpg(p.pid, signal.SIGTERM)
        for p in workers:
            p.wait(timeout=60)


def wait_measured(db_url: str, ids: dict[str, str], timeout: float) -> dict[str, Measured]:
    """Once every batch is final: each one's submit, first send, last answer and successes (plain SQL, so
    an older schema reads the same)."""
    engine = create_engine(db_url)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            left = conn.execute(
                text("SELECT count(*) FROM requests WHERE status IN ('queued', 'running')")
            ).scalar_one()
            if not left:
                break
            time.sleep(0.5)
        out = {}
        for name, batch_id in ids.items():
            row = conn.execute(
                text(
                    "SELECT b.created_at, (SELECT min(a.started_at) FROM attempts a JOIN requests r"
                    " ON r.id = a.request_id WHERE r.batch_id = b.id), (SELECT max(r.finished_at) FROM"
                    " requests r WHERE r.batch_id = b.id), (SELECT count(*) FROM requests r WHERE"
                    " r.batch_id = b.id AND r.status = 'succeeded') FROM batches b WHERE b.id = :id"
                ),
                {"id": batch_id},
            ).one()
            out[name] = Measured(*(_when(v) for v in row[:3]), int(row[3]))
    engine.dispose()
    return out


def busy_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """The length of the union of the (start, end) spans."""
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def _when(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def report(
    batches: list[Planned], measured: dict[str, Measured], rate: float, stats: dict[str, object], title: str
) -> list[str]:
    fair, fifo = fair_ideal(batches, rate), fifo_ideal(batches, rate)
    lines = [
        f"**{title}**",
        "",
        "| batch | requests | priority | submitted at | done after | fair ideal | / fair | FIFO ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = min(m.submitted for m in measured.values())
    ratios = []
    for b, f, q in zip(batches, fair, fifo, strict=True):
        m = measured[b.name]
        took = (m.done - m.submitted).total_seconds()
        ratios.append(took / f)
        at = (m.submitted - first).total_seconds()
        lines.append(
            f"| {b.name} | {b.size} | {b.priority} | {at:.1f} s | {took:.1f} s | {f:.1f} s | {took / f:.2f} |"
            f" {q:.1f} s |"
        )
    sent = sum(m.succeeded for m in measured.values())
    span = (
        max(m.done for m in measured.values()) - min(m.first_sent for m in measured.values())
    ).total_seconds()
    busy = busy_seconds([(m.first_sent, m.done) for m in measured.values()])
    by_status = dict(stats["by_status"])  # type: ignore[call-overload]
    received = int(stats["received"])  # type: ignore[call-overload]
    r429 = int(by_status.get("429", 0))
    lines += [
        "",
        f"{sent} requests in {span:.1f} s from first send to last answer: {sent / span:.1f}/s, "
        f"{sent / span / rate:.3f} of the limit; while some batch was sending ({busy:.1f} s): "
        f"{sent / busy / rate:.3f} of the limit; {received} calls, {r429} answered 429 "
        f"({100 * r429 / max(received, 1):.2f}%); done after / fair ideal: "
        f"mean {sum(ratios) / len(ratios):.2f}, max {max(ratios):.2f}.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spread", type=float, default=40.0, help="submits fall within this many seconds")
    parser.add_argument("--sizes", default="100,300,1000,2500")
    parser.add_argument("--priorities", default="1")
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--baseline-src", help="also run the schedule with the pipeline package of this checkout"
    )
    args = parser.parse_args()
    batches = plan(
        args.batches,
        args.seed,
        args.spread,
        [int(s) for s in args.sizes.split(",")],
        [int(p) for p in args.priorities.split(",")],
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-fair-"))
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
        [
            sys.executable,
            "-m",
            "pipeline",
            "fake-api",
            "--port",
            str(api_port),
            "--latency",
            str(args.latency),
        ]
        + ["--window", "1", "--rpm", str(args.rpm)],
        stderr=subprocess.DEVNULL,
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))},
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{api_port}/v1",
        "PIPELINE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PIPELINE_CHUNK_SIZE": "100",
    }
    rate = args.rpm / 60
    lines = [
        f"limit {args.rpm} RPM (1 s buckets), latency {args.latency} s, {args.workers} workers, "
        f"seed {args.seed}",
        "",
    ]
    try:
        time.sleep(1.5)
        runs = [("this checkout", "fair", None)]
        if args.baseline_src:
            runs.append((f"baseline: {args.baseline_src}", "base", args.baseline_src))
        for title, tag, src in runs:
            subprocess.run(["redis-cli", "-p", str(redis_port), "flushall"], check=True, capture_output=True)
            fake_reset(api_port)
            measured = run_fleet(batches, args, env, tmp, tag, src)
            lines += report(batches, measured, rate, fake_stats(api_port), title)
    finally:
        fake.terminate()
        redis.terminate()
        fake.wait()
        redis.wait()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
