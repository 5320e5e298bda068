"""Every socket pipeline listens on is bound to loopback unless another address is asked for.

Real processes (`pipeline worker --metrics-port`, `pipeline run --metrics-port`, `pipeline fake-api`,
`pipeline ui`); their listening sockets are read from /proc (the process's socket inodes, matched in
/proc/net/tcp and tcp6).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY
from tests.helpers import chat_file
from tests.services import Fleet, free_port, wait_for

pytestmark = pytest.mark.integration

#: /proc/net/tcp's state of a listening socket.
LISTEN = "0A"


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, IPv4 and IPv6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                found.add(_address(local, family))
    return found


def _address(local: str, family: int) -> tuple[str, int]:
    """/proc/net/tcp's `0100007F:1F90` as ("127.0.0.1", 8080): each 32-bit word in host (little) order."""
    hex_address, hex_port = local.split(":")
    raw = bytes.fromhex(hex_address)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, packed), int(hex_port, 16)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `pipeline ARGS` in its own process group; every one is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"proc-{len(started)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))}
    return {**base, "PIPELINE_DATA_DIR": str(tmp_path / "data"), "OPENAI_API_KEY": TEST_KEY, **extra}


def _listens_on(proc: subprocess.Popen[bytes], port: int) -> set[tuple[str, int]]:
    wait_for(lambda: proc.poll() is not None or any(p == port for _, p in listening(proc.pid)), 60)
    assert proc.poll() is None, "the process ended before it listened"
    return listening(proc.pid)


@pytest.mark.parametrize("host", [None, "127.0.0.2"])
def test_worker_metrics_bind_loopback_unless_told(
    make_fleet: Callable[..., Fleet], fake: FakeServer, host: str | None
) -> None:
    port = free_port()
    fleet = make_fleet(OPENAI_API_KEY=TEST_KEY, OPENAI_BASE_URL=fake.url)
    extra = ("--metrics-host", host) if host else ()
    worker = fleet.start("--metrics-port", str(port), *extra)
    assert listening(worker.proc.pid) == {(host or "127.0.0.1", port)}


def test_run_metrics_bind_loopback_and_take_the_env_address(
    spawn: Callable[..., subprocess.Popen[bytes]], fake: FakeServer, tmp_path: Path
) -> None:
    fake.config.latency = 5.0  # the run lasts while its sockets are looked at
    jobs = chat_file(tmp_path / "jobs.jsonl", 4)
    port = free_port()
    run = spawn("run", str(jobs), "--metrics-port", str(port), env=_env(tmp_path, OPENAI_BASE_URL=fake.url))
    assert _listens_on(run, port) == {("127.0.0.1", port)}
    run.kill()
    run.wait(timeout=30)

    port = free_port()
    env = _env(tmp_path, OPENAI_BASE_URL=fake.url, PIPELINE_METRICS_HOST="127.0.0.2")
    run = spawn("run", str(jobs), "--metrics-port", str(port), env=env)
    assert _listens_on(run, port) == {("127.0.0.2", port)}


@pytest.mark.parametrize("host", [None, "127.0.0.2"])
def test_the_fake_api_binds_loopback_unless_told(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, host: str | None
) -> None:
    port = free_port()
    extra = ("--host", host) if host else ()
    fake = spawn("fake-api", "--port", str(port), *extra, env=_env(tmp_path))
    assert _listens_on(fake, port) == {(host or "127.0.0.1", port)}


@pytest.mark.parametrize("host", [None, "127.0.0.2"])
def test_the_web_view_binds_loopback_unless_told(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, host: str | None
) -> None:
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-m", "pipeline", "db", "upgrade"], env=env, check=True, timeout=120)
    port = free_port()
    extra = ("--host", host) if host else ()
    view = spawn("ui", "--port", str(port), *extra, env=env)
    assert _listens_on(view, port) == {(host or "127.0.0.1", port)}
