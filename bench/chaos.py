"""The chaos soak: a fleet under random faults for N minutes, then the invariants that must hold at once.

Starts its own Redis and PostgreSQL (scripts/services, on free loopback ports), the fake API in this
process (0.2 s latency with jitter, 6,000 RPM in 1-second buckets) and 3 `pipeline worker` processes sharing
them (lease 6 s, timeout 10 s). For the chaos window it submits batches at random times (some later
cancelled or reprioritised) and injects faults at random, all drawn from --seed:

    kill9        SIGKILL a worker's process group; restarted 1-4 s later
    sigstop      SIGSTOP a worker for 2-15 s (often longer than its lease), then SIGCONT
    clock_step   restart a worker under libfaketime, its clock 1 or 5 minutes ahead or behind
    redis        restart Redis (no persistence: every queued message is lost), down 1-4 s
    postgres     restart PostgreSQL (pg_ctl stop -m fast), down 1-4 s
    pg_kill      pg_terminate_backend on every connection to the database
    burst_5xx    the fake answers half the requests 500/502/503 for 3-8 s
    storm_429    the fake's limit drops to 600 RPM for 3-8 s (a storm of 429s)
    hangs        a fifth of the requests hang 20 s (past the 10 s timeout) for 3-8 s

Then it heals (every fault undone, paused batches resumed as an operator would), waits until every row is
final, stops every worker with SIGTERM, and checks:

    all_final       every row of every batch succeeded, failed or was cancelled; batches ended
    no_row_lost     each batch holds exactly the lines of its file
    paid_twice      requests answered more than once <= the sum, over the faults that can make a request
                    go out again (all but the fake's own), of what was at stake when each struck: requests
                    on the wire plus answers not yet stored (fake's in_flight + answered - stored)
    nothing_stuck   rows became final within the deadline, every command ended within 2 minutes, and every
                    worker drained and exited 0
    no_traceback    no traceback in the workers' logs

It prints one JSON object (the figures and each invariant) and exits 0 when all hold. Logs stay in --out.

    .venv/bin/python bench/chaos.py --minutes 2 --seed 7          # what tests/test_chaos.py runs
    .venv/bin/python bench/chaos.py --minutes 30 --seed 1 --out /tmp/chaos   # the soak in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from chaos_fleet import LIBFAKETIME, Services, Stuck, Worker, pipeline
from sqlalchemy import create_engine, text

from pipeline.fakeapi import FakeConfig, FakeServer

KEY = "sk-chaos-soak-3f9a1c7e5b2d"
#: Fault kinds and how often each is drawn.
FAULTS = {
    "kill9": 3,
    "sigstop": 3,
    "clock_step": 1,
    "redis": 1,
    "postgres": 1,
    "pg_kill": 2,
    "burst_5xx": 1,
    "storm_429": 1,
    "hangs": 1,
}
#: Faults of the fake's own: they never make a request go out again, so they add nothing at stake.
API_FAULTS = {"burst_5xx", "storm_429", "hangs"}
#: The fake's normal limit, and its limit during a 429 storm.
RPM, STORM_RPM = 6000, 600
LEASE = 6.0


class Soak:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.rng = random.Random(args.seed)
        # Under /tmp, readable by all: the postgres user runs the cluster, and --out may be private.
        self.services = Services(Path(tempfile.mkdtemp(prefix="pipeline-chaos-services-", dir="/tmp")))
        self.db_url = self.services.database("chaos")
        self.db = create_engine(self.db_url, pool_pre_ping=True)
        self.fake = FakeServer(
            FakeConfig(api_key=KEY, seed=args.seed, latency=0.2, latency_jitter=0.1, rpm=RPM)
        )
        self.fake.start()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": self.fake.url,
            "PIPELINE_DATABASE_URL": self.db_url,
            "PIPELINE_BROKER_URL": self.services.redis_url,
            "PIPELINE_DATA_DIR": str(out / "data"),
            "PIPELINE_LEASE_SECONDS": str(LEASE),
            "PIPELINE_CHUNK_SIZE": "100",
            "PIPELINE_TIMEOUT": "10",
        }
        self.workers = [Worker(i, self.env, out) for i in range(args.workers)]
        self.later: list[tuple[float, int, str, Callable[[], None], bool]] = []  # restores, retries
        self.lock = threading.Lock()  #: guards `later` (slow actions run in `pool` and may reschedule)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="chaos")
        self.pending: list[Future[None]] = []  #: slow actions started
        self.order = itertools.count()
        self.faults: list[dict[str, Any]] = []
        self.batches: dict[str, int] = {}  #: batch id -> lines in its file
        self.controls: Counter[str] = Counter()
        self.stuck: list[str] = []  #: commands that did not end within their deadline
        self.stored = 0  #: the last stored-successes count read
        self.progress: list[tuple[float, int, int]] = []  #: (time, final rows, outstanding rows)
        self.start = time.monotonic()

    # --- bookkeeping -------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.start

    def query(self, sql: str) -> list[Any] | None:
        try:
            with self.db.connect() as conn:
                return list(conn.execute(text(sql)))
        except Exception:  # the database is down or its connections were killed: a fault, not an error
            return None

    def at_stake(self) -> int:
        """Requests on the wire plus requests answered and not yet stored, now: the fake's in-flight count,
        plus the requests it answered at least once (answers to a request sent again are not counted
        twice), minus the rows stored succeeded (the last count read when the database is down)."""
        rows = self.query("SELECT count(*) FROM requests WHERE status = 'succeeded'")
        if rows is not None:
            self.stored = int(rows[0][0])
        stats = self.fake.stats()
        answered = sum(1 for body in stats["bodies"].values() if int(body["answered"]) > 0)
        return max(0, int(stats["in_flight"]) + answered - self.stored)

    def counts(self) -> dict[str, Counter[str]] | None:
        rows = self.query("SELECT batch_id, status, count(*) FROM requests GROUP BY batch_id, status")
        if rows is None:
            return None
        found: dict[str, Counter[str]] = {}
        for batch_id, status, n in rows:
            found.setdefault(batch_id, Counter())[status] = int(n)
        return found

    def sample(self) -> None:
        counts = self.counts()
        if counts is None:
            return
        final = sum(
            c["succeeded"] + c["failed"] + c["cancelled"] for b, c in counts.items() if b in self.batches
        )
        outstanding = sum(self.batches.values()) - final
        self.progress.append((self.now(), final, outstanding))

    def after(self, seconds: float, what: str, action: Callable[[], None], slow: bool = False) -> None:
        """Run `action` in `seconds`; a `slow` one (a process start, a CLI command) in the thread pool,
        so the faults keep their times."""
        with self.lock:
            heapq.heappush(self.later, (self.now() + seconds, next(self.order), what, action, slow))

    def run_due(self, everything: bool = False) -> list[Future[None]]:
        """Start what is due (or everything waiting, once each); what fails is tried again 2 s later."""
        due = []
        with self.lock:
            while self.later and (everything or self.later[0][0] <= self.now()):
                due.append(heapq.heappop(self.later))
        started = []
        for _, _, what, action, slow in due:
            if slow:
                started.append(self.pool.submit(self._attempt, what, action, slow))
                self.pending.append(started[-1])
            else:
                self._attempt(what, action, slow)
        return started

    def _attempt(self, what: str, action: Callable[[], None], slow: bool) -> None:
        try:
            action()
        except Stuck as exc:  # a command that hangs is a finding, whatever the fault around it
            self.stuck.append(f"{self.now():.1f}s {exc}")
            print(f"{self.now():7.1f}s STUCK: {exc}", file=sys.stderr)
            self.after(2.0, what, action, slow)
        except Exception as exc:  # e.g. a worker cannot start while Redis is down: try again soon
            print(f"{self.now():7.1f}s {what} failed ({exc}); again in 2 s", file=sys.stderr)
            self.after(2.0, what, action, slow)

    # --- faults ------------------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        up = [w for w in self.workers if w.up]
        if kind in ("kill9", "sigstop", "clock_step") and len(up) < 2:
            return  # keep one worker sending, or nothing would be left to recover
        if (kind == "redis" and not self.services.redis_up) or (
            kind in ("postgres", "pg_kill") and not self.services.postgres_up
        ):
            return
        stake = 0 if kind in API_FAULTS else self.at_stake()
        self.faults.append({"kind": kind, "at": round(self.now(), 1), "at_stake": stake})
        print(f"{self.now():7.1f}s fault {kind} (at stake {stake})", file=sys.stderr)
        getattr(self, f"_{kind}")(self.rng.choice(up) if up else None)

    def _kill9(self, worker: Worker) -> None:
        worker.kill(restart=True)
        self.after(self.rng.uniform(1, 4), f"restart worker {worker.index}", worker.start, slow=True)

    def _sigstop(self, worker: Worker) -> None:
        worker.pause()
        self.after(self.rng.uniform(2, 15), f"SIGCONT worker {worker.index}", worker.resume)

    def _clock_step(self, worker: Worker) -> None:
        worker.kill(restart=True)
        clock = self.rng.choice(["+60s", "-60s", "+300s", "-300s"])
        self.after(0.5, f"restart worker {worker.index} at {clock}", lambda: worker.start(clock), slow=True)

    def _redis(self, _: Worker | None) -> None:
        self.services.stop_redis()
        self.after(self.rng.uniform(1, 4), "start Redis", self.services.start_redis)

    def _postgres(self, _: Worker | None) -> None:
        self.services.stop_postgres()
        self.after(self.rng.uniform(1, 4), "start PostgreSQL", self.services.start_postgres)

    def _pg_kill(self, _: Worker | None) -> None:
        self.services.terminate_connections("chaos")

    def _burst_5xx(self, _: Worker | None) -> None:
        self.fake.config.error_rate = 0.5
        self.after(
            self.rng.uniform(3, 8), "end 5xx burst", lambda: setattr(self.fake.config, "error_rate", 0.0)
        )

    def _storm_429(self, _: Worker | None) -> None:
        self.fake.config.rpm = STORM_RPM
        self.after(self.rng.uniform(3, 8), "end 429 storm", lambda: setattr(self.fake.config, "rpm", RPM))

    def _hangs(self, _: Worker | None) -> None:
        self.fake.config.hang_seconds, self.fake.config.hang_rate = 20.0, 0.2
        self.after(self.rng.uniform(3, 8), "end hangs", lambda: setattr(self.fake.config, "hang_rate", 0.0))

    # --- batches -----------------------------------------------------------------------------------

    def job_file(self, index: int, lines: int) -> Path:
        """Batch `index`'s job file: every line's content unique, so the fake counts each row apart."""
        path = self.out / f"batch-{index}.jsonl"
        with open(path, "wb") as fh:
            for i in range(lines):
                body = {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"chaos {index} {i}"}],
                }
                line = {
                    "custom_id": f"b{index}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
                fh.write(orjson.dumps(line) + b"\n")
        return path

    def submit(self, path: Path, lines: int, priority: int) -> None:
        done = pipeline(self.env, "submit", str(path), "--priority", str(priority))
        if done.returncode != 0:
            raise RuntimeError(f"submit exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        batch_id = done.stdout.strip().splitlines()[-1]
        self.batches[batch_id] = lines  # counted from now on, whatever happens next
        if "not enqueued again" in done.stderr:  # stored by a try that then could not enqueue: enqueue it
            self.after(0.0, f"resume {batch_id}", lambda: self.control("resume", batch_id, []), slow=True)
        print(f"{self.now():7.1f}s submitted batch {batch_id} ({lines} rows)", file=sys.stderr)

    def pick(self, verb: str) -> None:
        """Cancel or reprioritise a random batch still in progress, as an operator would."""
        states = dict(self.query("SELECT id, state FROM batches") or [])
        open_ones = sorted(b for b in list(self.batches) if states.get(b) == "in_progress")
        if open_ones:
            batch_id = self.rng.choice(open_ones)
            args = ["--wait", "5"] if verb == "cancel" else [str(self.rng.randint(1, 5))]
            self.after(0.0, f"{verb} {batch_id}", lambda: self.control(verb, batch_id, args), slow=True)

    def control(self, verb: str, batch_id: str, args: list[str]) -> None:
        done = pipeline(self.env, verb, batch_id, *args)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"{verb} {batch_id} exit {done.returncode}")
        self.controls[verb] += 1
        print(f"{self.now():7.1f}s {verb} {batch_id} {' '.join(args)}", file=sys.stderr)

    # --- phases ------------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str, Callable[[], None], bool]]:
        """Every fault, submission, cancel and priority change of the chaos window, drawn from the seed."""
        window = self.args.minutes * 60
        events: list[tuple[float, str, Callable[[], None], bool]] = []
        t = 2.0
        while (t := t + self.rng.expovariate(1 / self.args.fault_every)) < window:
            kind = self.rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            events.append((t, kind, lambda k=kind: self.fault(k), False))
        batches = max(3, round(self.args.minutes * self.args.batches_per_minute))
        for i in range(batches):
            at = 0.5 + (0.0 if i == 0 else self.rng.uniform(0, window * 0.8))
            lines, priority = self.rng.randint(self.args.min_rows, self.args.max_rows), self.rng.randint(1, 3)
            path = self.job_file(i, lines)
            events.append((at, f"submit {i}", lambda p=path, n=lines, q=priority: self.submit(p, n, q), True))
            if self.rng.random() < 0.2:
                events.append((self.rng.uniform(at, window), "cancel", lambda: self.pick("cancel"), False))
            if self.rng.random() < 0.4:
                events.append(
                    (self.rng.uniform(at, window), "priority", lambda: self.pick("priority"), False)
                )
        return sorted(events, key=lambda e: e[0])

    def chaos(self) -> None:
        for worker in self.workers:
            worker.start()
        events = self.schedule()
        last_sample = 0.0
        for at, what, action, slow in events:
            while self.now() < at:
                self.run_due()
                if self.now() - last_sample >= 1.0:
                    self.sample()
                    last_sample = self.now()
                time.sleep(0.1)
            self.after(0.0, what, action, slow)
            self.run_due()
        while self.now() < self.args.minutes * 60:
            self.run_due()
            time.sleep(0.2)

    def heal(self) -> bool:
        """Undo every fault, resume what paused, and wait until every row is final; False if it never is."""
        self.run_due(everything=True)
        for started in list(self.pending):  # restarts under way too: the heal starts nothing twice
            started.result(timeout=300)
        if not self.services.redis_up:
            self.services.start_redis()
        if not self.services.postgres_up:
            self.services.start_postgres()
        self.fake.config.error_rate, self.fake.config.hang_rate, self.fake.config.rpm = 0.0, 0.0, RPM
        for worker in self.workers:
            if worker.stopped:
                worker.resume()
            if not worker.up:
                worker.start()
        deadline = time.monotonic() + self.args.heal_seconds
        while time.monotonic() < deadline:
            self.run_due()
            self.sample()
            states = dict(self.query("SELECT id, state FROM batches") or [])
            for batch_id in sorted(b for b in list(self.batches) if states.get(b) == "paused"):
                self.control("resume", batch_id, [])
            if (
                self.progress
                and self.progress[-1][2] == 0
                and all(states.get(b) in ("completed", "cancelled") for b in self.batches)
            ):
                return True
            time.sleep(1.0)
        return False

    def report(self, healed: bool, exits: list[int | None]) -> dict[str, Any]:
        counts = self.counts() or {}
        states = dict(self.query("SELECT id, state FROM batches") or [])
        totals = dict(self.query("SELECT id, total FROM batches") or [])
        paid_twice = sum(max(0, int(b["answered"]) - 1) for b in self.fake.stats()["bodies"].values())
        bound = sum(f["at_stake"] for f in self.faults)
        final = {b: counts.get(b, Counter()) for b in self.batches}
        tracebacks = sum(w.log.read_text(errors="replace").count("Traceback") for w in self.workers)
        invariants = {
            "all_final": healed
            and all(
                c["succeeded"] + c["failed"] + c["cancelled"] == self.batches[b] for b, c in final.items()
            )
            and all(states.get(b) in ("completed", "cancelled") for b in self.batches),
            "no_row_lost": all(
                totals.get(b) == n and sum(final[b].values()) == n for b, n in self.batches.items()
            ),
            "paid_twice": paid_twice <= bound,
            "nothing_stuck": healed and all(code == 0 for code in exits) and not self.stuck,
            "no_traceback": tracebacks == 0,
        }
        return {
            "seed": self.args.seed,
            "minutes": self.args.minutes,
            "faults": len(self.faults),
            "faults_by_kind": dict(sorted(Counter(f["kind"] for f in self.faults).items())),
            "controls": dict(self.controls),
            "batches": len(self.batches),
            "rows": sum(self.batches.values()),
            "succeeded": sum(c["succeeded"] for c in final.values()),
            "failed": sum(c["failed"] for c in final.values()),
            "cancelled": sum(c["cancelled"] for c in final.values()),
            "paid_twice": paid_twice,
            "at_stake_at_faults": bound,
            "longest_stall_seconds": round(longest_stall(self.progress), 1),
            "worker_exits": exits,
            "stuck_commands": self.stuck,
            "tracebacks": tracebacks,
            "invariants": invariants,
            "ok": all(invariants.values()),
        }

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for worker in self.workers:
            worker.kill_all()
        self.fake.stop()
        self.db.dispose()
        self.services.close()


def longest_stall(progress: list[tuple[float, int, int]]) -> float:
    """The longest time rows were outstanding while none became final (from the samples)."""
    longest, since, best = 0.0, None, -1
    for at, final, outstanding in progress:
        if outstanding <= 0 or final > best:  # done, or progress: a new stretch starts here
            since, best = at, final
            continue
        longest = max(longest, at - (since if since is not None else at))
    return longest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the chaos window")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--fault-every", type=float, default=6.0, help="mean seconds between faults")
    parser.add_argument("--batches-per-minute", type=float, default=2.5)
    parser.add_argument("--min-rows", type=int, default=300)
    parser.add_argument("--max-rows", type=int, default=2500)
    parser.add_argument(
        "--heal-seconds", type=float, default=300.0, help="deadline for every row to be final"
    )
    parser.add_argument("--out", type=Path, help="where logs go (default: a new temporary folder)")
    args = parser.parse_args()
    if LIBFAKETIME is None:
        FAULTS.pop("clock_step")
        print("libfaketime not found (apt-get install faketime): no clock steps", file=sys.stderr)
    out = args.out or Path(tempfile.mkdtemp(prefix="pipeline-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, out)
    try:
        soak.chaos()
        healed = soak.heal()
        exits = [w.terminate(timeout=120) for w in soak.workers]
        summary = soak.report(healed, exits)
    finally:
        soak.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    print(f"logs in {out}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
