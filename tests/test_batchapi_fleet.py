"""`pipeline submit --via batch-api` with real `pipeline worker` processes over real Redis: the workers
upload, create and poll the parts (one at a time per part), and a worker killed while polling leaves its
part to the others. Bounded waits; every worker is killed at the end whatever happens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.fakeapi import FakeServer
from pipeline.store.db import Database
from pipeline.store.models import Part, PartState
from tests.services import Fleet, wait_for
from tests.test_batchapi import answered_twice, attempts_of, requests_of
from tests.test_batchapi_crash import batch_api, job_file
from tests.test_fleet import fleet_env, status, submit, wait_final

pytestmark = pytest.mark.integration


def polling_holder(database_url: str) -> str | None:
    """The worker id of an engine holding a part whose remote batch it is polling, if any."""
    db = Database(database_url)
    try:
        with db.read() as s:
            return s.scalars(
                select(Part.holder).where(Part.state == PartState.SUBMITTED, Part.holder.is_not(None))
            ).first()
    finally:
        db.engine.dispose()


def test_two_workers_one_killed_while_polling_the_other_finishes(
    fake: FakeServer, make_fleet: Callable[..., Fleet], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    fake.config.batch_seconds = 3.0
    fake.config.batch_delays = {"retrieve": 2.0}  # a poll holds its part for a while
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url), PIPELINE_BATCH_POLL_SECONDS="0.5")
    workers = fleet.start_many(2)
    batch_id = submit(fleet, job_file(tmp_path), "--via", "batch-api", "--part-size", "3")
    assert len(status(fleet, batch_id)["parts"]) == 3

    holders: list[str] = []

    def someone_polls() -> bool:
        holder = polling_holder(database_url)
        holders.extend([holder] if holder else [])
        return bool(holder)

    wait_for(someone_polls, 60)
    pid = int(holders[0].split(":")[-2])  # worker ids are host:pid:suffix
    victim = next(w for w in workers if w.proc.pid == pid)
    victim.kill()
    survivor = next(w for w in workers if w is not victim)

    final = wait_final(fleet, batch_id, 120)
    assert final["succeeded"] == 7 and final["running"] == 0
    parts = [p["part"] for p in final["parts"]]
    assert all(p["state"] == "done" and p["remote_status"] == "completed" for p in final["parts"])
    api = batch_api(fake)
    assert Counter(api["uploaded"]) == {f"pipeline-{batch_id}-{p}.jsonl": 1 for p in parts}
    assert Counter(c["metadata"]["pipeline_part"] for c in api["created"]) == {p: 1 for p in parts}
    rows = requests_of(database_url, batch_id)
    assert all(r.attempts == 1 for r in rows.values())
    assert all(
        [a.via for a in found] == ["batch-api"] for found in attempts_of(database_url, batch_id).values()
    )
    assert answered_twice(fake) == 0 and fake.stats()["received"] == 0
    assert survivor.proc.poll() is None and "Traceback" not in survivor.output()
