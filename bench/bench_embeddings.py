"""Embeddings in bulk: N rows of 16 inputs each, 1,536 dimensions, through `pipeline run` at zero latency.

Measures requests/s (the whole command: validate, store, send, parse, store the vectors; and the sending
span alone, from the batch's first send to its last answer stored), the database's bytes per vector against
the raw float32 size (goal: at most 1.2x), and the peak RSS of the `run` process. The fake API runs in its
own process on the same cores. SQLite by default (the file and its WAL, measured after the run); with
--database-url a PostgreSQL database (pg_database_size, so give it an empty database). Run by hand:

    .venv/bin/python bench/bench_embeddings.py --requests 100000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

KEY = "sk-bench-embeddings"
MODEL = "text-embedding-3-small"  # 1,536 dimensions


def write_jobs(path: Path, n: int, inputs: int, encoding: str) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            texts = [f"row {i} passage {j}: a short paragraph of a corpus to embed" for j in range(inputs)]
            body = {"model": MODEL, "input": texts, "encoding_format": encoding}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
            fh.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


def database_bytes(url: str) -> int:
    """The database's size on disk: the SQLite file with its WAL, or PostgreSQL's pg_database_size."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def sending_span(env: dict[str, str], batch_id: str) -> float:
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", batch_id, "--json"],
        env=env,
        capture_output=True,
        check=True,
    )
    report = orjson.loads(status.stdout)
    first = datetime.fromisoformat(report["first_sent_at"].rstrip("Z"))
    last = datetime.fromisoformat(report["finished_at"].rstrip("Z"))
    return (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--encoding", choices=("base64", "float"), default="base64")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--port", type=int, default=18998)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and its database)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, args.requests, args.inputs, args.encoding)
    url = args.database_url or f"sqlite:///{tmp / 'pipeline.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
        "OPENAI_API_KEY": KEY,
        "PIPELINE_DATA_DIR": str(tmp / "data"),
        "PIPELINE_DATABASE_URL": url,
    }
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(args.port)], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.5)
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(jobs),
            "--base-url",
            f"http://127.0.0.1:{args.port}/v1",
        ]
        t0 = time.perf_counter()
        done = subprocess.run(
            [*command, "--max-in-flight", str(args.max_in_flight)],
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the run, waited for first
    finally:
        fake.terminate()
        fake.wait()
    batch_id = done.stdout.decode().strip().splitlines()[-1]
    span = sending_span(env, batch_id)
    size = database_bytes(url)
    vectors = args.requests * args.inputs
    raw = 1536 * 4
    where, per_vector = url.split(":")[0], size / vectors
    print(f"requests: {args.requests} x {args.inputs} inputs, 1,536 dimensions, {args.encoding}, {where}")
    print(f"pipeline run: {wall:.1f} s, {args.requests / wall:.0f} req/s ({vectors / wall:.0f} vectors/s)")
    print(f"sending span (first send to last answer stored): {span:.1f} s, {args.requests / span:.0f} req/s")
    print(f"database: {size / 1e9:.2f} GB, {per_vector:.0f} bytes per vector, {per_vector / raw:.3f}x raw")
    print(f"peak RSS of pipeline run: {peak_rss:.0f} MiB")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
