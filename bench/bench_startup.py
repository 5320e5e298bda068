"""How fast commands start, against the bare imports measured in the same run (issue 19's targets:
`pipeline --help` <= 3x `import click`; `status` on 100,000 requests <= 1.5x `import sqlalchemy, click`).

Run by hand from the checkout, with the project installed:

    .venv/bin/python bench/bench_startup.py [--requests 100000] [--runs 15]

Every command runs `--runs` times in fresh processes, the commands taking turns (round after round), so a
change of the machine's load falls on all of them alike. Wall time and CPU time (user + sys, which load
inflates much less) are reported as medians, with the ratios the targets name. `--instructions` also counts
each command's instructions once under valgrind (cachegrind, no cache simulation: about 10 s a command),
the one figure another process's load cannot move.

The database is built directly (intake of a generated file, then every row marked succeeded with one attempt
row each), so the status query reads what a finished batch holds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Usage, run_measured  # noqa: E402

from pipeline.jobs.intake import store_job_file  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.store.db import open_database  # noqa: E402


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


def instructions(command: list[str], env: dict[str, str]) -> int | None:
    """Instructions `command` executes, counted by valgrind (None without valgrind)."""
    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    return int(found.group(1).replace(",", "")) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    args = parser.parse_args()
    python, pipeline = [sys.executable], [sys.executable, "-m", "pipeline"]
    commands = {
        "python -c 'import click'": [*python, "-c", "import click"],
        "python -c 'import sqlalchemy, click'": [*python, "-c", "import sqlalchemy, click"],
        "pipeline --version": [*pipeline, "--version"],
        "pipeline --help": [*pipeline, "--help"],
        f"pipeline status ({args.requests:,})": [*pipeline, "status"],
        "pipeline status --json": [*pipeline, "status", "--json"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        build(data, args.requests)
        env = {**os.environ, "PIPELINE_DATA_DIR": str(data)}
        runs: dict[str, list[Usage]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                usage = run_measured(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                assert usage.returncode == 0, name
                runs[name].append(usage)
        counted = {name: instructions(c, env) for name, c in commands.items()} if args.instructions else {}
    wall = {name: statistics.median(u.wall for u in done) for name, done in runs.items()}
    cpu = {name: statistics.median(u.cpu for u in done) for name, done in runs.items()}
    names = list(commands)
    print(f"medians of {args.runs} runs; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'command':40} {'wall':>8} {'cpu':>8} {'instructions':>14}")
    for name in names:
        count = f"{counted[name]:,}" if counted.get(name) else "-"
        print(f"{name:40} {wall[name] * 1000:6.0f}ms {cpu[name] * 1000:6.0f}ms {count:>14}")
    click, sqla = names[0], names[1]
    for name, base in ((names[2], click), (names[3], click), (names[4], sqla), (names[5], sqla)):
        ratio = f", instructions {counted[name] / counted[base]:.2f}x" if counted.get(name) else ""
        print(
            f"{name} / {base.removeprefix('python -c ')}: wall {wall[name] / wall[base]:.2f}x,"
            f" cpu {cpu[name] / cpu[base]:.2f}x{ratio}"
        )


if __name__ == "__main__":
    main()
