"""Measure the web view on a 1,000,000-request batch, and `export --format parquet` of it.

Run by hand, not by pytest:

    .venv/bin/python bench/bench_ui.py --rows 1000000                                   # SQLite
    .venv/bin/python bench/bench_ui.py --rows 1000000 --database-url postgresql+psycopg://...

The batch is built once with bulk INSERTs (bench/out/ui.db, git-ignored; reused by later runs): requests
sent over about an hour at ~280 attempts/s, 1-3 attempts each (429s and 500s before the answer), latencies
spread like a real API's, tokens on every answered attempt, finish reasons stop and length, failures of
three kinds, cancelled and queued rows, the usage and failure counters as the writer keeps them and a
learned limit. Then `pipeline ui` is started on it in a child process and each page's JSON is fetched
--repeat times over HTTP (the batches list, the batch page's charts and summary, a row page filtered to
`failed`, a row page searched by output text, one row); the best and the median are printed. Last, the
batch is exported to Parquet in a fresh process: seconds and peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from pipeline.store import series, usage
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchState, LimitState, Request

OUT = Path(__file__).resolve().parent / "out"
STARTED = datetime(2026, 11, 1, 12, 0, 0)
#: Attempts per second the built batch was sent at.
RATE = 280.0

BODY_PREFIX = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise item '
BODY_SUFFIX = ' in one sentence."}],"max_tokens":200}'


#: A request's pseudo-random draw, from its line's index i (the same on SQLite and PostgreSQL).
H = "((({i}) * 2654435761) % 4294967296)"
KIND = f"({H} % 100)"  # < 3 invalid request, < 6 server error, < 9 timeout, < 11 cancelled, else succeeded
TRIES = (
    f"(CASE WHEN {KIND} BETWEEN 9 AND 10 THEN 0"
    f" ELSE (CASE ({H} / 100) % 6 WHEN 4 THEN 2 WHEN 5 THEN 3 ELSE 1 END) END)"
)
STATUS = f"(CASE WHEN {KIND} < 9 THEN 'failed' WHEN {KIND} < 11 THEN 'cancelled' ELSE 'succeeded' END)"
ERROR = (
    f"(CASE WHEN {KIND} < 3 THEN 'invalid_request_error' WHEN {KIND} < 6 THEN 'server_error'"
    f" WHEN {KIND} < 9 THEN 'timeout' WHEN {KIND} < 11 THEN 'cancelled' END)"
)
MESSAGE = (
    f"(CASE WHEN {KIND} < 3 THEN 'Invalid value for temperature' WHEN {KIND} < 6 THEN"
    f" 'The server had an error while processing your request.' WHEN {KIND} < 9 THEN"
    f" 'read timed out after 600 s' WHEN {KIND} < 11 THEN 'cancelled' END)"
)
FINAL_HTTP = (
    f"(CASE WHEN {KIND} < 3 THEN 400 WHEN {KIND} < 6 THEN 500 WHEN {KIND} < 9 THEN NULL ELSE 200 END)"
)
FINISH = f"(CASE WHEN ({H} / 7) % 100 < 8 THEN 'length' ELSE 'stop' END)"
OUTPUT = "'Item ' || CAST({i} AS TEXT) || ' is a small, well-made thing that does exactly what it says.'"


def _time(sqlite: bool, ms: str) -> str:
    """The timestamp `ms` milliseconds after STARTED, as each database stores a DateTime."""
    if sqlite:
        return (
            f"strftime('%Y-%m-%d %H:%M:%S', '{STARTED}', '+' || (({ms}) / 1000) || ' seconds')"
            f" || printf('.%06d', (({ms}) % 1000) * 1000)"
        )
    return f"(timestamp '{STARTED}' + ({ms}) * interval '1 millisecond')"


def _series(sqlite: bool, rows: int) -> str:
    if sqlite:
        return (
            "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s"
            f" WHERE i < {rows - 1}) SELECT i FROM s)"
        )
    return f"(SELECT generate_series(0::bigint, {rows - 1}) AS i)"


def _requests_sql(sqlite: bool, batch_id: str, rows: int, first: int) -> str:
    i = "s.i"
    f = {"i": i}
    at = _time(sqlite, f"{i} * 5")
    return (
        "INSERT INTO requests (id, batch_id, line, custom_id, url, body, status, attempts, error_type,"
        " error_message, created_at, finished_at, fence)"
        f" SELECT {first} + {i}, '{batch_id}', {i} + 1, 'req-' || CAST({i} AS TEXT), '/v1/chat/completions',"
        f" '{BODY_PREFIX}' || CAST({i} AS TEXT) || '{BODY_SUFFIX}',"
        f" {STATUS.format(**f)}, {TRIES.format(**f)},"
        f" {ERROR.format(**f)}, {MESSAGE.format(**f)}, {_time(sqlite, '0')}, {at}, 1"
        f" FROM {_series(sqlite, rows)} AS s"
    )


def _attempts_sql(sqlite: bool, batch_id: str, k: int) -> str:
    f = {"i": "(r.line - 1)"}
    last = f"r.attempts = {k}"
    status = (
        f"(CASE WHEN {last} THEN {FINAL_HTTP.format(**f)}"
        f" WHEN ({H.format(**f)} / 1000 + {k}) % 3 = 0 THEN 500 ELSE 429 END)"
    )
    ok = f"({last} AND {KIND.format(**f)} >= 11)"
    h = H.format(**f)
    latency = (
        f"(CASE WHEN {last} AND {KIND.format(**f)} BETWEEN 6 AND 8 THEN 600000.0 ELSE"
        f" 150.0 + ({h} % 1000) + (({h} / 1000) % 60) * (({h} / 1000) % 60) * 1.5 + {k * 7} END)"
    )
    tokens = lambda n: f"(CASE WHEN {ok} THEN {n} END)"  # noqa: E731
    return (
        "INSERT INTO attempts (request_id, number, started_at, latency_ms, http_status, error_type,"
        " prompt_tokens, completion_tokens, total_tokens)"
        f" SELECT r.id, {k}, {_time(sqlite, f'(r.line - 1) * 5 + {(k - 1) * 700}')}, {latency}, {status},"
        f" (CASE WHEN {ok} THEN NULL WHEN {last} THEN r.error_type ELSE 'rate_limit_exceeded' END),"
        f" {tokens(31)}, {tokens(24)}, {tokens(55)}"
        f" FROM requests r WHERE r.batch_id = '{batch_id}' AND r.attempts >= {k}"
    )


def _results_sql(batch_id: str) -> str:
    f = {"i": "(r.line - 1)"}
    ok = f"{KIND.format(**f)} >= 11"
    output = OUTPUT.format(**f)
    body = (
        f'(CASE WHEN {ok} THEN \'{{"id":"chatcmpl-\' || CAST(r.id AS TEXT) || \'","choices":[{{"index":0,'
        f'"message":{{"role":"assistant","content":"\' || {output} || \'"}},"finish_reason":"\''
        f' || {FINISH.format(**f)} || \'"}}],"usage":{{"prompt_tokens":31,"completion_tokens":24,'
        f'"total_tokens":55}}}}\' ELSE \'{{"error":{{"message":"\' || r.error_message || \'"}}}}\' END)'
    )
    return (
        "INSERT INTO results (request_id, http_status, x_request_id, content_type, body, response_id, model,"
        " finish_reasons, output, prompt_tokens, completion_tokens, total_tokens)"
        f" SELECT r.id, {FINAL_HTTP.format(**f)}, 'req_' || CAST(r.id AS TEXT), 'application/json', {body},"
        f" (CASE WHEN {ok} THEN 'chatcmpl-' || CAST(r.id AS TEXT) END),"
        f" (CASE WHEN {ok} THEN 'gpt-4o-mini-2024-07-18' END),"
        f" (CASE WHEN {ok} THEN {FINISH.format(**f)} END),"
        f" (CASE WHEN {ok} THEN {output} END), (CASE WHEN {ok} THEN 31 END), (CASE WHEN {ok} THEN 24 END),"
        f" (CASE WHEN {ok} THEN 55 END)"
        f" FROM requests r WHERE r.batch_id = '{batch_id}' AND ({KIND.format(**f)} < 6 OR {ok})"
    )


def build(db: Database, batch_id: str, rows: int) -> None:
    """Insert the batch with INSERT ... SELECT statements the database runs itself (a million rows in a
    minute or two, where rows sent from Python took a quarter of an hour on a shared machine), then its
    usage and failure counters and a learned limit."""
    t0 = time.perf_counter()
    with db.write() as s:
        s.add(Batch(id=batch_id, source="bench.jsonl", content_hash="0" * 64, base_url="http://bench/v1",
                    key_fingerprint="bench", total=rows, created_at=STARTED,
                    state=BatchState.COMPLETED,
                    finished_at=STARTED + timedelta(seconds=rows * 0.005)))  # fmt: skip
        first = (s.scalar(select(func.max(Request.id))) or 0) + 1
    steps = [("requests", _requests_sql(db.is_sqlite, batch_id, rows, first))]
    steps += [(f"attempts {k}", _attempts_sql(db.is_sqlite, batch_id, k)) for k in (1, 2, 3)]
    steps += [("results", _results_sql(batch_id))]
    for name, sql in steps:
        with db.write() as s:
            s.execute(text(sql.replace(":", "\\:")))  # a colon in the JSON is no bind parameter
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    with db.write() as s:
        s.execute(text(COUNTERS), {"b": batch_id})
        series.rebuild(s, db.is_sqlite, [batch_id])
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    with db.write() as s:
        usage.rebuild_failures(s, batch_id)
        s.merge(LimitState(key="http://bench/v1|bench||gpt-4o-mini", base_url="http://bench/v1",
                           key_fingerprint="bench", model="gpt-4o-mini", rpm=18_000, rpm_source="learned",
                           tpm=2_000_000, tpm_source="learned", updated_at=STARTED))  # fmt: skip
    print(f"built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


#: The usage counters of the built batch, as claims.record adds them attempt by attempt.
COUNTERS = (
    "INSERT INTO batch_usage (batch_id, model, tier, attempts, charged, rate_limited, prompt_tokens,"
    " cached_tokens, completion_tokens, total_tokens, audio_seconds, first_sent_at)"
    " SELECT r.batch_id, 'gpt-4o-mini', 'direct', count(*), count(a.total_tokens),"
    " sum(CASE WHEN a.http_status = 429 THEN 1 ELSE 0 END), coalesce(sum(a.prompt_tokens), 0), 0,"
    " coalesce(sum(a.completion_tokens), 0), coalesce(sum(a.total_tokens), 0), 0, min(a.started_at)"
    " FROM attempts a JOIN requests r ON r.id = a.request_id WHERE r.batch_id = :b GROUP BY r.batch_id"
)


PAGES = {
    "batches list": "/api/batches",
    "batch page": "/api/batches/{b}",
    "rows: failed": "/api/batches/{b}/rows?status=failed&after=500000",
    "rows: error type": "/api/batches/{b}/rows?error_type=timeout",
    "rows: search output": "/api/batches/{b}/rows?search=Item%20999999%20",
    "one row": "/api/batches/{b}/rows/{row}",
}


def _fetch(url: str) -> float:
    request = urllib.request.Request(url, headers={"Authorization": "token bench"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - t0


def time_pages(url: str, batch_id: str, repeat: int) -> dict[str, dict[str, float]]:
    """Start `pipeline ui` on the database and time each page's JSON over HTTP."""
    port = 8790
    env = {**os.environ, "PIPELINE_DATABASE_URL": url}
    command = [sys.executable, "-m", "pipeline", "ui", "--port", str(port), "--token", "bench"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _fetch(f"{base}/api/session")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        db = Database(url)
        with db.read() as s:
            row = s.scalar(select(func.max(Request.id)).where(Request.batch_id == batch_id))
        times = {}
        for name, path in PAGES.items():
            page = base + path.format(b=batch_id, row=row)
            _fetch(page)  # warm: the first read of a table after a build
            runs = [_fetch(page) for _ in range(repeat)]
            times[name] = {"best_s": round(min(runs), 3), "median_s": round(statistics.median(runs), 3)}
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def _peak_rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


def child(url: str, batch_id: str) -> None:
    """Export the batch to Parquet in this (fresh) process: seconds and peak RSS."""
    from pipeline.export import export_batch

    path = OUT / "ui.parquet"
    t0 = time.perf_counter()
    with open(path, "wb") as out:
        count = export_batch(Database(url), batch_id, "parquet", out)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "records": count,
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(_peak_rss_kib() / 1024, 1),
                "file_mb": round(path.stat().st_size / 2**20, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=f"sqlite:///{OUT / 'ui.db'}")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-parquet", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_id = f"ui{args.rows}"
    if args.child:
        child(args.database_url, batch_id)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    db = Database(args.database_url)
    db.upgrade()
    with db.read() as s:
        exists = s.get(Batch, batch_id) is not None
    if not exists:
        build(db, batch_id, args.rows)
    db.engine.dispose()
    result: dict[str, Any] = {"database": db.engine.dialect.name, "rows": args.rows}
    result["pages"] = time_pages(args.database_url, batch_id, args.repeat)
    if not args.no_parquet:
        command = [sys.executable, __file__, "--rows", str(args.rows), "--database-url", args.database_url]
        done = subprocess.run([*command, "--child"], check=True, capture_output=True, text=True)
        result["parquet"] = json.loads(done.stdout)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
