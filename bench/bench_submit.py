"""Submit at scale: `pipeline submit` of a 1,000,000-line job file on SQLite, with the filesystem broker.

Measures wall time and peak RSS of the submit process (validate every line, hash the file, insert every
row in one transaction, publish one message per 500 ids). Run by hand:

    .venv/bin/python bench/bench_submit.py --lines 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def write_jobs(path: Path, n: int) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Label row {i}: some text"}],
            }
            fh.write(
                orjson.dumps(
                    {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
                + b"\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, args.lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PIPELINE_DATA_DIR"] = str(tmp / "data")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", str(jobs)], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", file=sys.stderr)
    print(f"lines: {args.lines:,}  file: {jobs.stat().st_size / 1e6:.0f} MB")
    print(f"pipeline submit: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB, exit {done.returncode}")


if __name__ == "__main__":
    main()
