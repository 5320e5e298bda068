"""How fast commands start: `pipeline --version` and `pipeline status` on a 100,000-request database, against
`python -c "import click"` measured in the same run (targets: --version <= 3x import click, status <= 0.5 s).

Run by hand from the checkout, with the project installed:

    .venv/bin/python bench/bench_startup.py [--requests 100000] [--runs 15]

The database is built directly (intake of a generated file, then every row marked succeeded with one attempt
row each), so the status query reads what a finished batch holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from sqlalchemy import text

from pipeline.jobs.intake import store_job_file
from pipeline.settings import Settings
from pipeline.store.db import open_database


def build(data_dir: Path, requests: int) -> None:
    job = data_dir / "jobs.jsonl"
    with open(job, "wb") as fh:
        for i in range(requests):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}
            fh.write(
                orjson.dumps(
                    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
            )
            fh.write(b"\n")
    settings = Settings.load({"data_dir": str(data_dir)})
    db = open_database(settings.db_url)
    batch_id = store_job_file(db, settings, str(job)).batch_id
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE requests SET status = 'succeeded', attempts = 1, finished_at = created_at"))
        conn.execute(
            text(
                "INSERT INTO attempts (request_id, number, started_at, latency_ms, http_status,"
                " prompt_tokens, completion_tokens, total_tokens)"
                " SELECT id, 1, created_at, 100.0, 200, 10, 5, 15 FROM requests"
            )
        )
    print(f"built {requests:,} requests in batch {batch_id}", file=sys.stderr)


def timed(command: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of `runs` runs, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        build(data, args.requests)
        env = {**os.environ, "PIPELINE_DATA_DIR": str(data)}
        pipeline = [sys.executable, "-m", "pipeline"]
        click = timed([sys.executable, "-c", "import click"], env, args.runs)
        version = timed([*pipeline, "--version"], env, args.runs)
        status = timed([*pipeline, "status"], env, args.runs)
        status_json = timed([*pipeline, "status", "--json"], env, args.runs)
    print(f"python -c 'import click'    {click * 1000:7.0f} ms")
    print(f"pipeline --version          {version * 1000:7.0f} ms   ({version / click:.1f}x import click)")
    print(f"pipeline status ({args.requests:,})   {status * 1000:7.0f} ms")
    print(f"pipeline status --json      {status_json * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
