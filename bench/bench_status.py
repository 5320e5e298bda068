"""Measure `pipeline status` on a 1,000,000-request batch: target under 1 s on SQLite and PostgreSQL.

Run by hand, not by pytest:

    .venv/bin/python bench/bench_status.py --rows 1000000                      # SQLite, bench/out/status.db
    .venv/bin/python bench/bench_status.py --rows 1000000 --database-url postgresql+psycopg://...

The batch is built once (bench_export's rows: mostly successes with 1-3 attempts, failures of two kinds,
cancelled and queued rows), its usage counters added as the writer keeps them, and reused by later runs.
Then `pipeline status BATCH --json` runs --repeat times in fresh processes (the whole command: start,
connect, queries, JSON) and the report alone in this process; the best and the median are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import build  # noqa: E402

from pipeline.prices import shipped  # noqa: E402
from pipeline.report import batch_report  # noqa: E402
from pipeline.store import batches, usage  # noqa: E402
from pipeline.store.db import Database  # noqa: E402
from pipeline.store.models import Batch  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"

#: The usage counters of the built batch, as claims.record would have added them attempt by attempt.
COUNTERS = (
    "INSERT INTO batch_usage (batch_id, model, tier, attempts, charged, rate_limited, prompt_tokens,"
    " cached_tokens, completion_tokens, total_tokens, audio_seconds, first_sent_at)"
    " SELECT r.batch_id, 'gpt-4o-mini', 'direct', count(*), 0, 0, 0, 0, 0, 0, 0, min(a.started_at)"
    " FROM attempts a JOIN requests r ON r.id = a.request_id WHERE r.batch_id = :b GROUP BY r.batch_id"
)
TOKENS = (
    "UPDATE batch_usage SET charged = (SELECT count(*) FROM results s JOIN requests r ON r.id = s.request_id"
    " WHERE r.batch_id = :b AND s.prompt_tokens IS NOT NULL), prompt_tokens = (SELECT coalesce(sum("
    "s.prompt_tokens), 0) FROM results s JOIN requests r ON r.id = s.request_id WHERE r.batch_id = :b),"
    " completion_tokens = (SELECT coalesce(sum(s.completion_tokens), 0) FROM results s JOIN requests r"
    " ON r.id = s.request_id WHERE r.batch_id = :b) WHERE batch_id = :b"
)


def timed(command: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=f"sqlite:///{OUT / 'status.db'}")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--vacuum", action="store_true", help="PostgreSQL: VACUUM ANALYZE before timing")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    batch_id = f"status{args.rows}"
    db = Database(args.database_url)
    db.upgrade()
    with db.read() as s:
        exists = s.get(Batch, batch_id) is not None
    if not exists:
        build(db, batch_id, args.rows)
        with db.write() as s:
            s.execute(text(COUNTERS), {"b": batch_id})
            s.execute(text(TOKENS), {"b": batch_id})
            usage.rebuild_failures(s, batch_id)
    if args.vacuum and not db.is_sqlite:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    in_process = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        report = batch_report(db, batches.get_batch(db, batch_id), shipped())
        in_process.append(time.perf_counter() - t0)
    db.engine.dispose()
    env = {**os.environ, "PIPELINE_DATABASE_URL": args.database_url}
    command = [sys.executable, "-m", "pipeline", "status", batch_id, "--json"]
    whole = [timed(command, env) for _ in range(args.repeat)]
    print(
        json.dumps(
            {
                "database": db.engine.dialect.name,
                "rows": report["total"],
                "attempts": report["attempts"],
                "failed": report["failed"],
                "report_best_s": round(min(in_process), 3),
                "report_median_s": round(statistics.median(in_process), 3),
                "command_best_s": round(min(whole), 3),
                "command_median_s": round(statistics.median(whole), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
