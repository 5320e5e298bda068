"""A fleet's cost: N `pipeline worker` processes on PostgreSQL and Redis against a zero-latency fake API.

Starts its own servers on loopback (a Redis and a PostgreSQL cluster, as scripts/services does, stopped at
the end) and the fake; then, for each N of --workers, on a fresh database: N workers (Celery over Redis,
the shared limiter in Redis) are started and left to settle, a batch of --requests chat rows is submitted,
and the CPU spent until the batch is completed is read from /proc: the workers' processes, PostgreSQL's
(the postmaster and every backend, those that ended included) and Redis's. `pipeline run` of the same file
on the same PostgreSQL (a fresh database) is measured the same way for comparison.

Printed per run: requests/s (submit to completed), and CPU seconds per 1,000 requests of the sender (the
workers, or the `run` process: its start-up and intake included), of `submit` (start-up, validate and store
the file, publish the messages), PostgreSQL and Redis; and Redis's commands per request (INFO
commandstats). With --count-statements PostgreSQL logs every statement (log_statement = all), which are
counted per request by kind; logging costs PostgreSQL CPU, so take the CPU figures from a run without it.
Run by hand:

    .venv/bin/python bench/bench_fleet.py --requests 20000 [--workers 1,2] [--repeat 1] [--count-statements]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import KEY, free_port, wait_up, write_jobs  # noqa: E402
from procs import pidfile, proc_cpu, run_measured, tree_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.statements import kind  # noqa: E402

#: A statement in PostgreSQL's log under log_statement = all (simple, or extended protocol's execute).
LOGGED = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)")


@dataclass
class Servers:
    """The private Redis and PostgreSQL of this run."""

    directory: Path
    redis_url: str
    postgres_url: str

    @property
    def redis_pid(self) -> int:
        return pidfile(self.directory / "redis.pid")

    @property
    def postmaster_pid(self) -> int:
        return pidfile(self.directory / "pg" / "postmaster.pid")

    def log_statements(self, on: bool) -> None:
        admin = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET log_statement = '{'all' if on else 'none'}'"))
            conn.execute(text("SELECT pg_reload_conf()"))
        admin.dispose()

    def log_size(self) -> int:
        return (self.directory / "pg" / "log").stat().st_size

    def statements_since(self, offset: int) -> Counter[str]:
        """Statements PostgreSQL logged after byte `offset` of its log, by kind."""
        with open(self.directory / "pg" / "log", "rb") as fh:
            fh.seek(offset)
            logged = fh.read().decode("utf-8", "replace")
        return Counter(kind(m.group(1)) for m in LOGGED.finditer(logged))

    def redis_commands(self) -> Counter[str]:
        out = subprocess.run(
            ["redis-cli", "-u", self.redis_url, "info", "commandstats"], capture_output=True, text=True
        ).stdout
        return Counter({name: int(n) for name, n in re.findall(r"cmdstat_([\w|]+):calls=(\d+)", out)})

    def database(self, name: str) -> str:
        """A fresh database `name` on the cluster; its URL."""
        admin = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.postgres_url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Costs:
    """One run: seconds from submit (or run) to the batch completed, and CPU seconds per side."""

    label: str
    requests: int
    seconds: float
    sender: float  #: the workers, or the `run` process
    submit: float
    postgres: float
    redis: float
    commands: Counter[str] = field(default_factory=Counter)  #: Redis's, by command
    statements: Counter[str] = field(default_factory=Counter)  #: PostgreSQL's, by kind (if counted)

    def counts(self) -> str:
        """Redis commands and SQL statements per request, most frequent first."""
        lines = []
        for name, counted in (("Redis commands", self.commands), ("SQL statements", self.statements)):
            if counted:
                top = ", ".join(f"{k} {n / self.requests:.3f}" for k, n in counted.most_common(12))
                total = sum(counted.values()) / self.requests
                lines.append(f"  {self.label}: {name} per request {total:.3f} ({top})")
        return "\n".join(lines)

    def line(self) -> str:
        k = self.requests / 1000
        return (
            f"| {self.label} | {self.requests / self.seconds:,.0f} | {self.sender / k:.3f} |"
            f" {self.submit / k:.3f} | {self.postgres / k:.3f} | {self.redis / k:.3f} |"
            f" {(self.sender + self.submit + self.postgres + self.redis) / k:.3f} |"
        )


def start_servers(directory: Path) -> Servers:
    directory.mkdir()
    for folder in (directory.parent, directory):  # PostgreSQL runs as its own user and must reach its folder
        folder.chmod(0o755)
    out = subprocess.run(
        [str(ROOT / "scripts" / "services"), "start", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = dict(
        item.split("=", 1) for line in out.splitlines() for item in line.removeprefix("export ").split()
    )
    return Servers(directory, found["TEST_REDIS_URL"], found["TEST_POSTGRES_URL"])


def environment(servers: Servers, database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))}
    env.update(
        OPENAI_API_KEY=KEY,
        PIPELINE_DATA_DIR=str(data_dir),
        PIPELINE_DATABASE_URL=database_url,
        PIPELINE_BROKER_URL=servers.redis_url,
        PIPELINE_REDIS_URL=servers.redis_url,
    )
    return env


def settle(pids: list[int], quiet: float = 0.05, deadline: float = 60.0) -> None:
    """Wait until these processes are idle (less than `quiet` CPU-s in a second): start-up is over."""
    until = time.monotonic() + deadline
    last = tree_cpu(pids)
    while time.monotonic() < until:
        time.sleep(1.0)
        now = tree_cpu(pids)
        if now - last < quiet:
            return
        last = now


def wait_completed(database_url: str, batch_id: str, deadline: float = 1800.0) -> None:
    engine = create_engine(database_url)
    until = time.monotonic() + deadline
    try:
        while time.monotonic() < until:
            with engine.connect() as conn:
                state = conn.execute(
                    text("SELECT state FROM batches WHERE id = :b"), {"b": batch_id}
                ).scalar()
            if state == "completed":
                return
            time.sleep(0.2)
        raise TimeoutError(f"batch {batch_id} not completed in {deadline}s")
    finally:
        engine.dispose()


def fleet_run(servers: Servers, jobs: Path, tmp: Path, n: int, args: argparse.Namespace, name: str) -> Costs:
    url = servers.database(name)
    env = environment(servers, url, tmp / name)
    subprocess.run(["redis-cli", "-u", servers.redis_url, "flushall"], check=True, capture_output=True)
    workers = []
    for i in range(n):
        log = open(tmp / f"{name}-worker{i}.log", "wb")  # noqa: SIM115 - closed with the worker
        command = [sys.executable, "-m", "pipeline", "worker", "--base-url", args.base_url]
        command += ["--max-in-flight", str(args.max_in_flight), "--concurrency", str(args.concurrency)]
        workers.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for _, log in workers:
            _wait_ready(Path(log.name))
        pids = [proc.pid for proc, _ in workers]
        settle(pids)
        before = tree_cpu(pids), tree_cpu([servers.postmaster_pid]), proc_cpu(servers.redis_pid)
        commands, logged = servers.redis_commands(), servers.log_size()
        started = time.perf_counter()
        submit = run_measured(
            [sys.executable, "-m", "pipeline", "submit", str(jobs), "--force"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert submit.returncode == 0, "submit failed"
        wait_completed(url, _batch_id(url))
        seconds = time.perf_counter() - started
        after = tree_cpu(pids), tree_cpu([servers.postmaster_pid]), proc_cpu(servers.redis_pid)
        commands = servers.redis_commands() - commands
        statements = servers.statements_since(logged) if args.count_statements else Counter()
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGTERM)
        for proc, log in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    worker_cpu, pg_cpu, redis_cpu = (a - b for a, b in zip(after, before, strict=True))
    label = f"{n} worker{'s' if n > 1 else ''}"
    return Costs(
        label, args.requests, seconds, worker_cpu, submit.cpu, pg_cpu, redis_cpu, commands, statements
    )


def run_here(servers: Servers, jobs: Path, tmp: Path, args: argparse.Namespace, name: str) -> Costs:
    url = servers.database(name)
    env = environment(servers, url, tmp / name)
    del env["PIPELINE_REDIS_URL"], env["PIPELINE_BROKER_URL"]  # `run` alone: its limiter in-process
    before = tree_cpu([servers.postmaster_pid]), proc_cpu(servers.redis_pid)
    logged = servers.log_size()
    command = [sys.executable, "-m", "pipeline", "run", str(jobs), "--base-url", args.base_url, "--force"]
    command += ["--max-in-flight", str(args.max_in_flight)]
    usage = run_measured(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert usage.returncode == 0, "run failed"
    pg_cpu = tree_cpu([servers.postmaster_pid]) - before[0]
    redis_cpu = proc_cpu(servers.redis_pid) - before[1]
    statements = servers.statements_since(logged) if args.count_statements else Counter()
    label = "`pipeline run`"
    return Costs(label, args.requests, usage.wall, usage.cpu, 0.0, pg_cpu, redis_cpu, statements=statements)


def _wait_ready(log: Path, deadline: float = 120.0) -> None:
    until = time.monotonic() + deadline
    while b"ready." not in log.read_bytes():
        if time.monotonic() > until:
            raise TimeoutError(f"worker not ready: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _batch_id(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT id FROM batches ORDER BY created_at DESC LIMIT 1")).scalar()
    engine.dispose()
    assert isinstance(found, str)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated fleet sizes")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=4, help="chunks per worker (pipeline worker's)")
    parser.add_argument("--no-run", action="store_true", help="skip `pipeline run` for comparison")
    parser.add_argument("--count-statements", action="store_true", help="PostgreSQL logs and counts them")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (the workers' logs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, args.requests)
    servers = start_servers(tmp / "services")
    servers.log_statements(args.count_statements)
    port = free_port()
    args.base_url = f"http://127.0.0.1:{port}/v1"
    fake = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-api", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    results: list[Costs] = []
    try:
        wait_up(f"http://127.0.0.1:{port}")
        for round_ in range(args.repeat):
            for n in (int(x) for x in args.workers.split(",")):
                results.append(fleet_run(servers, jobs, tmp, n, args, f"fleet{n}_{round_}"))
                print(results[-1].line(), flush=True)
            if not args.no_run:
                results.append(run_here(servers, jobs, tmp, args, f"run_{round_}"))
                print(results[-1].line(), flush=True)
    finally:
        fake.terminate()
        fake.wait()
        subprocess.run([str(ROOT / "scripts" / "services"), "stop", str(servers.directory)], check=False)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\n{args.requests:,} requests, --max-in-flight {args.max_in_flight}; load average {load:.1f}")
    print("| run | req/s | sender CPU-s/1k | submit CPU-s/1k | PostgreSQL CPU-s/1k | Redis CPU-s/1k | all |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        print(result.line())
    for result in results:
        if result.counts():
            print(result.counts())


if __name__ == "__main__":
    main()
