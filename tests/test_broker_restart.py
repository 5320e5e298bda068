"""Redis restarted under a working fleet: the workers live through it and the batch completes.

With kombu's own Redis transport, a worker holding unacknowledged messages (late acks: always) died of
"Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname')" when its broker
connection broke (pipeline/fleet/transport.py). Real `pipeline worker` processes, a redis-server of the
test's own (restarted without persistence: every queued message is lost), SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.fakeapi import FakeServer
from tests.helpers import chat_file
from tests.services import Fleet, free_port, wait_for
from tests.test_fleet import answered_more_than_once, fleet_env, submit, wait_final

pytestmark = pytest.mark.integration


class OwnRedis:
    """A redis-server on a port of its own, stopped and started again by the test."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(self._listening, 30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_workers_live_through_a_redis_restart(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    own_redis: OwnRedis,
    tmp_path: Path,
) -> None:
    fake.config.latency = 0.2
    fleet = make_fleet(**fleet_env(fake, database_url, own_redis.url))
    workers = fleet.start_many(2, "--max-in-flight", "50")
    batch_id = submit(fleet, chat_file(tmp_path / "jobs.jsonl", 1500))
    wait_for(lambda: fake.stats()["answered"] >= 100, 60)
    own_redis.stop()
    wait_for(lambda: all("Connection to broker lost" in w.output() for w in workers), 60)
    own_redis.start()
    final = wait_final(fleet, batch_id, 180)

    assert final["succeeded"] == 1500 and final["running"] == 0
    assert answered_more_than_once(fake) == 0  # no row was lost by anyone: nothing went out twice
    for worker in workers:
        assert worker.proc.poll() is None, worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()
        assert worker.terminate(timeout=60) == 0
