"""First-result latency of the Python API's streaming: from `pipeline.submit(...)` to the first stored answer
read by iterating the Batch, against the fake API answering every request after `--latency` seconds (1 s).

Also measured: submit's own time (intake, the background thread started), the last result, and the floor:
the fake's latency itself. Each run is a new batch in one SQLite database migrated beforehand (a first use
of a new database adds the migration, about a second, shown apart as "cold").

Run by hand from the checkout, with the project installed:

    .venv/bin/python bench/bench_first_result.py [--latency 1.0] [--requests 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pipeline
from pipeline.fakeapi import FakeConfig, FakeServer
from pipeline.settings import Settings
from pipeline.store.db import open_database


def one_run(url: str, requests: int, tag: str) -> dict[str, float]:
    rows = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{tag} question {i}"}]}
        for i in range(requests)
    ]
    start = time.perf_counter()
    batch = pipeline.submit(rows, endpoint="chat", base_url=url, progress=False)
    submitted = time.perf_counter()
    first = last = 0.0
    count = 0
    for _ in batch:
        last = time.perf_counter()
        first = first or last
        count += 1
    assert count == requests and batch.done
    return {"submit": submitted - start, "first": first - start, "last": last - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-first-") as tmp:
        os.environ["PIPELINE_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
        with FakeServer(FakeConfig(latency=args.latency, seed=1)) as fake:
            cold = one_run(fake.url, args.requests, "cold")
            open_database(Settings.load().db_url)
            runs = [one_run(fake.url, args.requests, f"run{i}") for i in range(args.runs)]
    print(f"fake latency {args.latency:.2f} s, {args.requests} requests per batch, {args.runs} runs")
    print(f"cold (new database): submit {cold['submit']:.3f} s, first {cold['first']:.3f} s")
    for key in ("submit", "first", "last"):
        values = sorted(r[key] for r in runs)
        median = statistics.median(values)
        print(f"{key:>7}: median {median:.3f} s  min {values[0]:.3f}  max {values[-1]:.3f}")
    overhead = statistics.median(r["first"] for r in runs) - args.latency
    print(f"first result minus the API's latency: {overhead:.3f} s")


if __name__ == "__main__":
    main()
