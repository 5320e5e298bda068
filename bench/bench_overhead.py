"""Overhead: CPU per request of `pipeline run` against a bare aiohttp loop, on a zero-latency fake API.

Both sides send the same N chat requests to the same `pipeline fake-api` process (started here, on
loopback), each side in a fresh process of its own, start-up included, with the same concurrency and the
same event loop (uvloop, as `pipeline run` uses):

- the bare loop (issue 19's reference): read the JSONL, POST each body with aiohttp, parse each answer and
  append it to a JSONL file. No database, no retries, no limits: the least a client can do.
- `pipeline run FILE`: validate, store the batch (SQLite, or --database-url), claim, pace, send, classify,
  parse, and store every attempt and result before it counts.

The figure is CPU (user + sys, os.wait4 of each side's process: it counts whatever threads it ran) per
request, and the ratio of the two (issue 19: `run` <= 2x the bare loop, goal 1.5x). On a shared machine CPU
time moves much less with load than wall time; each side runs --repeat times, alternating, and the spread
is printed. The fake's own CPU is printed too (it answers the same requests for both). With `--baseline
DIR` each round also runs `pipeline run` from another source tree (e.g. `git archive main | tar -x -C DIR`),
between the bare loop and this tree's run, so an A/B sees the same load. Run by hand:

    .venv/bin/python bench/bench_overhead.py --requests 20000 [--repeat 3] [--database-url URL]
        [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Usage, proc_cpu, run_measured  # noqa: E402

KEY = "sk-bench-overhead"


def write_jobs(path: Path, n: int) -> None:
    import orjson

    with open(path, "wb") as fh:
        for i in range(n):
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
            }
            fh.write(orjson.dumps(line) + b"\n")


async def bare_loop(jobs: Path, out: Path, base_url: str, concurrency: int) -> int:
    """The reference: every line POSTed by `concurrency` senders, every answer parsed and appended."""
    import aiohttp
    import orjson

    lines = iter([orjson.loads(raw) for raw in jobs.read_bytes().splitlines()])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = base_url + "/chat/completions"
    done = 0
    with open(out, "wb") as sink:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def sender() -> None:
                nonlocal done
                for line in lines:
                    async with session.post(url, data=orjson.dumps(line["body"]), headers=headers) as resp:
                        body = await resp.read()
                    answer = {"custom_id": line["custom_id"], "status": resp.status}
                    answer["body"] = orjson.loads(body)
                    sink.write(orjson.dumps(answer) + b"\n")
                    done += 1

            await asyncio.gather(*(sender() for _ in range(concurrency)))
    return done


def run_bare(args: argparse.Namespace) -> None:
    import uvloop

    n = uvloop.run(bare_loop(Path(args.jobs), Path(args.out), args.base_url, args.concurrency))
    assert n == sum(1 for _ in open(args.jobs, "rb")), n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, deadline: float = 30.0) -> None:
    until = time.monotonic() + deadline
    while True:
        try:
            urllib.request.urlopen(url + "/_fake/stats", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.05)


def summary(name: str, runs: list[tuple[Usage, float]], requests: int) -> str:
    per_k = [u.cpu / requests * 1000 for u, _ in runs]
    rate = [requests / u.wall for u, _ in runs]
    fake = [f / requests * 1000 for _, f in runs]
    return (
        f"{name:34} CPU/1,000 req {statistics.median(per_k):.3f} s ({min(per_k):.3f}-{max(per_k):.3f}),"
        f" wall {statistics.median(rate):,.0f} req/s ({min(rate):,.0f}-{max(rate):,.0f}),"
        f" fake's CPU/1,000 {statistics.median(fake):.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="pipeline run's database (default: SQLite in a temp dir)")
    parser.add_argument("--baseline", help="also run `pipeline run` from this source tree, each round")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the bare loop's process
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, args.requests)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    bare: list[tuple[Usage, float]] = []
    ours: list[tuple[Usage, float]] = []
    base: list[tuple[Usage, float]] = []
    try:
        wait_up(f"http://127.0.0.1:{port}")
        for i in range(args.repeat):
            bare.append(_side(fake.pid, [*_bare_command(jobs, tmp, base_url, args)], dict(os.environ)))
            command = [sys.executable, "-m", "pipeline", "run", str(jobs), "--base-url", base_url]
            command += ["--max-in-flight", str(args.concurrency), "--force"]
            print(f"round {i + 1}: bare {_line(bare[-1], args.requests)}")
            if args.baseline:
                env = _run_env(tmp / f"base{i}", args, args.baseline)
                base.append(_side(fake.pid, command, env, cwd=args.baseline))
                print(f"round {i + 1}: base {_line(base[-1], args.requests)}")
            ours.append(_side(fake.pid, command, _run_env(tmp / f"data{i}", args, None)))
            print(f"round {i + 1}: run  {_line(ours[-1], args.requests)}", flush=True)
    finally:
        fake.terminate()
        fake.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"requests: {args.requests:,}, concurrency {args.concurrency}, {args.repeat} rounds")
    print(summary("bare aiohttp loop -> JSONL", bare, args.requests))
    if base:
        print(summary("pipeline run (baseline tree)", base, args.requests))
        print(_ratios("baseline run / bare loop", base, bare))
    print(summary("pipeline run", ours, args.requests))
    print(_ratios("run / bare loop", ours, bare) + f"; load average {os.getloadavg()[0]:.1f}")


def _ratios(name: str, runs: list[tuple[Usage, float]], bare: list[tuple[Usage, float]]) -> str:
    ratios = [o.cpu / b.cpu for (o, _), (b, _) in zip(runs, bare, strict=True)]
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    return f"CPU per request, {name}: {statistics.median(ratios):.2f}x (rounds {rounds})"


def _run_env(data_dir: Path, args: argparse.Namespace, tree: str | None) -> dict[str, str]:
    """`pipeline run`'s environment: no PIPELINE_* of the caller's, its own data directory; a baseline tree
    first on the path (it runs from that directory too: `-m` puts the working directory first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(OPENAI_API_KEY=KEY, PIPELINE_DATA_DIR=str(data_dir))
    if args.database_url:
        env["PIPELINE_DATABASE_URL"] = args.database_url
    if tree:
        env["PYTHONPATH"] = tree
    return env


def _bare_command(jobs: Path, tmp: Path, base_url: str, args: argparse.Namespace) -> list[str]:
    out = tmp / "bare.jsonl"
    command = [sys.executable, __file__, "--bare", "--jobs", str(jobs), "--out", str(out)]
    return [*command, "--base-url", base_url, "--concurrency", str(args.concurrency)]


def _side(
    fake_pid: int, command: list[str], env: dict[str, str], cwd: str | None = None
) -> tuple[Usage, float]:
    """One side's run: its usage, and the CPU the fake spent meanwhile."""
    before = proc_cpu(fake_pid)
    usage = run_measured(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert usage.returncode == 0, f"{command[:4]} exited {usage.returncode}"
    return usage, proc_cpu(fake_pid) - before


def _line(side: tuple[Usage, float], requests: int) -> str:
    usage, fake = side
    return (
        f"{usage.wall:.2f} s wall, CPU {usage.user:.2f} user + {usage.sys:.2f} sys"
        f" = {usage.cpu / requests * 1000:.3f} s/1,000 (fake {fake:.2f} s)"
    )


if __name__ == "__main__":
    main()
