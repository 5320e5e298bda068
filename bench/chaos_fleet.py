"""The chaos soak's fleet (bench/chaos.py): private Redis and PostgreSQL it can restart, `pipeline worker`
processes it can kill, stop and restart under faketime, and the pipeline command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[1]

#: libfaketime (apt-get install faketime), preloaded into a worker whose clock is stepped; None: not here.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
#: Seconds a worker may take to say it is ready, a CLI command to finish, a service to stop or start.
READY_SECONDS, COMMAND_SECONDS, SERVICE_SECONDS = 60, 120, 60


def pipeline(
    env: dict[str, str], *args: str, timeout: float = COMMAND_SECONDS
) -> subprocess.CompletedProcess[str]:
    """`pipeline ARGS` in a process of its own; never raises for its exit code. One that does not end within
    `timeout` is killed and raises Stuck with the end of what it wrote."""
    command = [sys.executable, "-m", "pipeline", *args]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise Stuck(f"pipeline {' '.join(args)} did not end within {timeout:g}s: {said[-800:]!r}") from None


class Stuck(Exception):
    """A command that did not end within its deadline."""


class Services:
    """redis-server and a PostgreSQL cluster on free loopback ports (scripts/services), restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        try:
            started = subprocess.run(
                [str(ROOT / "scripts" / "services"), "start", str(folder)],
                capture_output=True,
                text=True,
                check=True,
                timeout=SERVICE_SECONDS,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.close()  # whatever did start (Redis, say) is stopped
            raise
        found = dict(
            part.split("=", 1)
            for line in started.stdout.splitlines()
            for part in line.split()[1:]
            if "=" in part
        )
        if "TEST_REDIS_URL" not in found or "TEST_POSTGRES_URL" not in found:
            raise SystemExit(f"redis-server and PostgreSQL are needed: {started.stderr.strip()}")
        self.redis_url = found["TEST_REDIS_URL"]
        self.server_url = found["TEST_POSTGRES_URL"]
        self.pg_dir, self.pg_bin, self.pg_port = (
            found["TEST_POSTGRES_DIR"],
            found["TEST_POSTGRES_BIN"],
            found["TEST_POSTGRES_PORT"],
        )
        self.redis_port = self.redis_url.rsplit(":", 1)[1].split("/")[0]
        self.redis_up = self.postgres_up = True

    def database(self, name: str) -> str:
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.server_url.rsplit("/", 1)[0] + f"/{name}"

    def stop_redis(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", self.redis_port, "shutdown", "nosave"], capture_output=True, timeout=30
        )
        self.redis_up = False

    def start_redis(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port",
                self.redis_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            + ["--daemonize", "yes", "--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid")]
            + ["--logfile", str(self.folder / "redis.log")],
            check=True,
            capture_output=True,
            timeout=SERVICE_SECONDS,
        )
        self.redis_up = True

    def _pg_ctl(self, *args: str) -> None:
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*run_as, f"{self.pg_bin}/pg_ctl", "-D", self.pg_dir, *args]
        subprocess.run(command, check=True, timeout=SERVICE_SECONDS, cwd="/", capture_output=True)

    def stop_postgres(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")
        self.postgres_up = False

    def start_postgres(self) -> None:
        options = (
            f"-p {self.pg_port} -k {self.pg_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._pg_ctl("-l", f"{self.pg_dir}/log", "-w", "-o", options, "start")
        self.postgres_up = True

    def terminate_connections(self, database: str) -> int:
        """Kill every connection to `database` but this one (pg_terminate_backend); how many."""
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).scalar()
        finally:
            admin.dispose()
        return int(killed or 0)

    def close(self) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "services"), "stop", str(self.folder)], timeout=SERVICE_SECONDS
        )


class Worker:
    """One `pipeline worker` slot: its process (restarted as needed) and its log, appended to."""

    def __init__(self, index: int, env: dict[str, str], logs: Path) -> None:
        self.index = index
        self.env = env
        self.log = logs / f"worker-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  #: SIGSTOPped now
        self.restarting = False  #: killed, a restart to come
        self.started: list[subprocess.Popen[bytes]] = []  #: every process of this slot, to end them all
        self._lock = threading.Lock()  #: one start at a time
        self.clock = "+0s"  #: the faketime offset it runs under

    def start(self, clock: str = "+0s") -> None:
        """Start the worker, its clock `clock` off (e.g. "-300s", libfaketime), and wait until it consumes."""
        with self._lock:  # a restart asked twice (a retry, the heal) starts one process
            if self.proc is None or self.proc.poll() is not None:
                self._start(clock)

    def _start(self, clock: str) -> None:
        env = dict(self.env)
        if clock != "+0s":  # libfaketime preloaded into the worker itself: its exit code is its own
            env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=clock)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            out.write(f"\n==== chaos: worker {self.index} started, clock {clock}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker", "--loglevel", "INFO", "--max-in-flight", "50"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        self.started.append(self.proc)
        self.stopped, self.restarting, self.clock = False, False, clock
        deadline = time.monotonic() + READY_SECONDS
        while b"ready." not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.index} did not start; see {self.log}")
            time.sleep(0.2)

    @property
    def up(self) -> bool:
        """Running, not stopped, no restart under way."""
        return self.proc is not None and self.proc.poll() is None and not self.stopped and not self.restarting

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self, restart: bool = False) -> None:
        """SIGKILL; `restart`: a restart is to come (the worker is not `up` until then)."""
        self.restarting = restart
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.stopped = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def kill_all(self) -> None:
        """SIGKILL every process this slot ever started (the soak leaves nothing behind)."""
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM (it drains) and wait; the exit code, or None when it did not end in time (then killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
