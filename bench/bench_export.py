"""Measure `pipeline export` on a large batch: wall time and peak RSS per format.

Run by hand, not by pytest:

    .venv/bin/python bench/bench_export.py --rows 1000000

The batch is built once with bulk inserts into a SQLite file (default bench/out/bench.db, git-ignored) and
reused by later runs. Each export runs in a fresh child process, so its peak RSS is the export's alone.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from pipeline.export import FORMATS, export_batch
from pipeline.store.db import Database
from pipeline.store.models import Attempt, Batch, Request, Result

OUT = Path(__file__).resolve().parent / "out"
CHUNK = 20_000
STARTED = datetime(2026, 11, 1, 12, 0, 0)

REQUEST_BODY = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
    '{"role":"user","content":"Summarise item %d in one sentence, please, with no preamble."}],'
    '"max_tokens":200,"temperature":0.2}'
)
RESPONSE_BODY = """{
  "id": "chatcmpl-%d",
  "object": "chat.completion",
  "created": 1764000000,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {
      "index": 0,
      "message": {"role": "assistant", "content": "%s", "refusal": null},
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {"prompt_tokens": 31, "completion_tokens": 24, "total_tokens": 55},
  "system_fingerprint": "fp_0ba0d124f1"
}"""
ERROR_BODY = (
    '{"error":{"message":"Invalid value for \'temperature\'","type":"invalid_request_error",'
    '"param":"temperature","code":null}}'
)
OUTPUT = "Item %d is a small, well-made thing that does, in short, exactly what it says on the tin."


Rows = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]


def _rows(batch_id: str, first_id: int, start: int, n: int) -> Iterator[Rows]:
    """(request, attempts, result or None) for lines start..start+n-1: mostly successes, some of each kind."""
    rng = random.Random(start)
    for i in range(start, start + n):
        rid = first_id + i
        req: dict[str, Any] = {
            "id": rid, "batch_id": batch_id, "line": i + 1, "custom_id": f"req-{i}",
            "url": "/v1/chat/completions", "body": REQUEST_BODY % i, "status": "succeeded",
            "attempts": rng.choice((1, 1, 1, 2, 3)), "error_type": None, "error_message": None,
        }  # fmt: skip
        result: dict[str, Any] | None = _success(rid, i)
        kind = rng.random()
        if kind < 0.05:
            req.update(status="failed", error_type="invalid_request_error", error_message="Invalid value")
            result = {"request_id": rid, "http_status": 400, "content_type": "application/json",
                      "body": ERROR_BODY}  # fmt: skip
        elif kind < 0.10:
            req.update(status="failed", error_type="timeout", error_message="read timeout after 60 s")
            result = None
        elif kind < 0.14:
            req.update(status="cancelled" if kind < 0.12 else "queued", attempts=0)
            result = None
        attempts = [
            {"request_id": rid, "number": k, "started_at": STARTED, "latency_ms": rng.uniform(200, 3000)}
            for k in range(1, req["attempts"] + 1)
        ]
        yield req, attempts, result


def _success(rid: int, i: int) -> dict[str, Any]:
    return {
        "request_id": rid, "http_status": 200, "x_request_id": f"req_{rid:024x}",
        "content_type": "application/json", "body": RESPONSE_BODY % (rid, OUTPUT % i),
        "response_id": f"chatcmpl-{rid}", "model": "gpt-4o-mini-2024-07-18", "finish_reasons": "stop",
        "output": OUTPUT % i, "prompt_tokens": 31, "completion_tokens": 24, "total_tokens": 55,
    }  # fmt: skip


def build(db: Database, batch_id: str, rows: int) -> None:
    """Insert the batch with bulk INSERTs, CHUNK requests (and their attempts and results) per transaction."""
    t0 = time.perf_counter()
    with db.write() as session:
        session.add(Batch(id=batch_id, source="bench.jsonl", content_hash="0" * 64, base_url="http://x",
                          key_fingerprint="bench", total=rows))  # fmt: skip
        first_id = (session.scalar(select(func.max(Request.id))) or 0) + 1
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        requests, attempts, results = [], [], []
        for req, atts, result in _rows(batch_id, first_id, start, n):
            requests.append(req)
            attempts.extend(atts)
            if result is not None:
                results.append(result)
        with db.write() as session:
            session.execute(insert(Request), requests)
            session.execute(insert(Attempt), attempts)
            session.execute(insert(Result), results)
        print(f"\rbuilt {start + n:,}/{rows:,}", end="", file=sys.stderr, flush=True)
    print(f"\nbuilt in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _peak_rss_kib() -> int:
    """This process image's peak RSS. ru_maxrss would do, but on Linux a child started by fork+exec inherits
    its parent's high-water mark, so it would report the builder's memory, not the export's."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


def child(url: str, batch_id: str, fmt: str) -> None:
    db = Database(url)
    path = OUT / f"export.{fmt}"
    t0 = time.perf_counter()
    with open(path, "wb") as out:
        count = export_batch(db, batch_id, fmt, out)
    seconds = time.perf_counter() - t0
    maxrss_mb = _peak_rss_kib() / 1024
    print(
        json.dumps(
            {
                "format": fmt,
                "records": count,
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(maxrss_mb, 1),
                "file_mb": round(path.stat().st_size / 2**20, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=OUT / "bench.db")
    parser.add_argument("--format", choices=FORMATS, action="append", help="default: every format")
    parser.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = f"sqlite:///{args.db}"
    batch_id = f"bench{args.rows}"
    if args.child:
        child(url, batch_id, args.child)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    db = Database(url)
    db.upgrade()
    with db.read() as session:
        exists = session.get(Batch, batch_id) is not None
    if not exists:
        build(db, batch_id, args.rows)
    db.engine.dispose()
    for fmt in args.format or FORMATS:
        cmd = [sys.executable, __file__, "--rows", str(args.rows), "--db", str(args.db), "--child", fmt]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
