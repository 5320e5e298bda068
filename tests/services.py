"""Real Redis, PostgreSQL and `pipeline worker` processes for integration tests.

The servers are started by scripts/test (TEST_REDIS_URL, TEST_POSTGRES_URL). Without them a test that needs
one is skipped locally and fails under CI=true. Every process a test starts is stopped by the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

#: Seconds a worker may take to start consuming.
WORKER_START_SECONDS = 30


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        message = f"{var} is not set: start the services with scripts/test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return value


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis database, emptied before the test."""
    url = need("TEST_REDIS_URL")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped after."""
    server = need("TEST_POSTGRES_URL")
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)  # survives a restart
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@dataclass
class PostgresServer:
    """The test cluster itself, for outage tests: stopped and started as its administrator."""

    directory: str
    bin_dir: str
    port: str

    def _ctl(self, *args: str) -> None:
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*run_as, f"{self.bin_dir}/pg_ctl", "-D", self.directory, *args]
        subprocess.run(command, check=True, timeout=60, cwd="/", stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._ctl("-l", f"{self.directory}/log", "-w", "-o", options, "start")


@pytest.fixture
def postgres_server(postgres_url: str) -> Iterator[PostgresServer]:
    """The cluster behind `postgres_url`; started again after the test whatever happened."""
    server = PostgresServer(need("TEST_POSTGRES_DIR"), need("TEST_POSTGRES_BIN"), need("TEST_POSTGRES_PORT"))
    yield server
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", server.port], capture_output=True).returncode:
        server.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP the whole process group: a long GC, a frozen VM, a partition, as the others see it.
        Returns once every thread of the worker is stopped (the signal takes effect as each thread next
        runs: on a loaded machine, a while later)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)
        wait_for(self._stopped, 30, interval=0.01)

    def _stopped(self) -> bool:
        tasks = Path(f"/proc/{self.proc.pid}/task")
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        return all(state in ("T", "t") for state in states)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)


@dataclass
class Fleet:
    """Starts `pipeline worker` processes with one environment; kills any left at the end of the test."""

    env: dict[str, str]
    tmp: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self, *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Worker:
        """A `pipeline worker` with `args`, ready; `prefix` runs it under another command (e.g. faketime),
        `env` adds to the fleet's environment for this worker only."""
        return self._ready(self._spawn(args, prefix, env or {}))

    def start_many(self, n: int, *args: str, envs: Sequence[dict[str, str]] = ()) -> list[Worker]:
        """`n` workers with `args`, started together (each takes seconds to import), all ready; the i-th
        worker's environment adds `envs[i]` when given."""
        extra = [*envs, *([{}] * (n - len(envs)))]
        return [self._ready(worker) for worker in [self._spawn(args, (), extra[i]) for i in range(n)]]

    def _spawn(self, args: tuple[str, ...], prefix: tuple[str, ...], env: dict[str, str]) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "pipeline", "worker", "--loglevel", "INFO", *args],
                env={**self.env, **env},
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    @staticmethod
    def _ready(worker: Worker) -> Worker:
        proc = worker.proc
        wait_for(lambda: "ready." in worker.output() or proc.poll() is not None, WORKER_START_SECONDS)
        assert proc.poll() is None, worker.output()
        return worker

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(**env: str) -> Fleet:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))}
        fleet = Fleet({**base, "PIPELINE_DATA_DIR": str(tmp_path / "data"), **env}, tmp_path)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> None:
    """Wait until `condition()` holds; fail after `timeout` seconds, with `explain()` (what the test knows of
    why) in the message."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout}s" + (f": {explain()}" if explain else "")
            )
        time.sleep(interval)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A redis-server without persistence on `port`, answering pings."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return server.poll() is not None  # exited: the assertion below says so

    try:
        wait_for(pings, 30)
    finally:
        client.close()
    assert server.poll() is None, "redis-server exited"
    return server
