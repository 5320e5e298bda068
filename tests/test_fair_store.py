"""Claims by share in the store, on SQLite and PostgreSQL: order, joining, pausing, queues, fences, and
that the capacity published always covers the queued rows."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from pipeline.settings import Settings
from pipeline.store import batches, claims, fair, recovery
from pipeline.store.claims import Claimed, Outcome, WorkerGone
from pipeline.store.db import Database, open_database
from pipeline.store.models import Batch, Request, RequestStatus, Worker
from tests.fair_helpers import short_chat_file

QUEUE = "pipeline"


@pytest.fixture
def db(database_url: str) -> Database:
    return open_database(database_url)


def make_batch(db: Database, tmp_path: Path, name: str, n: int, priority: int = 1, queue: str = QUEUE) -> str:
    """A stored batch of `n` rows, enqueued on `queue` (as `pipeline submit` leaves it)."""
    from pipeline.jobs.intake import store_job_file

    intake = store_job_file(db, Settings.load(), str(short_chat_file(tmp_path / f"{name}.jsonl", n, name)))
    fair.set_priority(db, intake.batch_id, priority)
    recovery.mark_enqueued(db, intake.batch_id, queue)
    return intake.batch_id


def worker(db: Database, name: str = "w1") -> str:
    claims.register(db, name, "test-host", 1, 60.0)
    return name


def finish(db: Database, rows: list[Claimed]) -> None:
    """Store every claimed row as succeeded (what an engine does once answered)."""
    claims.record(db, [Outcome(r.id, r.fence, RequestStatus.SUCCEEDED) for r in rows])


def by_batch(rows: list[Claimed]) -> Counter[str]:
    return Counter(r.batch_id for r in rows)


def test_claims_follow_priorities(db: Database, tmp_path: Path) -> None:
    high, low = make_batch(db, tmp_path, "high", 400, 3), make_batch(db, tmp_path, "low", 400, 1)
    w, taken = worker(db), Counter[str]()
    for _ in range(8):
        rows = fair.claim_share(db, w, 40, QUEUE)
        assert len(rows) == 40 and len(by_batch(rows)) == 1  # one batch per piece while it has rows
        taken += by_batch(rows)
    assert taken == {high: 240, low: 80}


def test_a_batch_enqueued_later_joins_at_the_lowest_vtime(db: Database, tmp_path: Path) -> None:
    big = make_batch(db, tmp_path, "big", 1000)
    w = worker(db)
    for _ in range(5):
        fair.claim_share(db, w, 100, QUEUE)
    small = make_batch(db, tmp_path, "small", 300)
    with db.read() as s:
        vtimes = dict(s.execute(select(Batch.id, Batch.vtime)).all())
    assert vtimes[small] == vtimes[big] == 500  # neither behind (a burst) nor ahead (a wait)
    firsts = [by_batch(fair.claim_share(db, w, 100, QUEUE, hint=big)) for _ in range(4)]
    assert sum(firsts, Counter[str]()) == {small: 200, big: 200}  # turns from now on
    assert firsts[0] == {big: 100}  # the message's own batch wins the tie


def test_the_engine_short_of_a_batch_gets_it_first(db: Database, tmp_path: Path) -> None:
    one, two = make_batch(db, tmp_path, "one", 200), make_batch(db, tmp_path, "two", 200, 3)
    w = worker(db)
    # The engine already has 90 rows of "two" (priority 3: 30 per weight) and 40 of "one" waiting.
    rows = fair.claim_share(db, w, 50, QUEUE, waiting={one: 40, two: 90})
    assert by_batch(rows) == {two: 50}
    rows = fair.claim_share(db, w, 50, QUEUE, waiting={two: 1})
    assert by_batch(rows) == {one: 50}  # none waiting at all comes first
    assert fair.claim_share(db, w, 50, QUEUE, waiting={one: 1, two: 1}, missing_only=True) == []


def test_a_paused_or_cancelled_batch_capacity_goes_to_the_others(db: Database, tmp_path: Path) -> None:
    paused, other = make_batch(db, tmp_path, "paused", 100), make_batch(db, tmp_path, "other", 100)
    cancelled = make_batch(db, tmp_path, "cancelled", 100)
    batches.pause_batch(db, paused, "quota")
    batches.cancel_batch(db, cancelled)
    w = worker(db)
    rows = fair.claim_share(db, w, 150, QUEUE, hint=paused)  # a message of the paused batch
    assert by_batch(rows) == {other: 100}
    assert fair.claim_share(db, w, 150, QUEUE) == []
    batches.requeue_final(db, paused, [])  # resume
    assert by_batch(fair.claim_share(db, w, 150, QUEUE)) == {paused: 100}


def test_claims_stay_within_their_queue(db: Database, tmp_path: Path) -> None:
    mine, theirs = make_batch(db, tmp_path, "mine", 50), make_batch(db, tmp_path, "theirs", 50, queue="gpu")
    w = worker(db)
    assert by_batch(fair.claim_share(db, w, 100, QUEUE)) == {mine: 50}
    assert by_batch(fair.claim_share(db, w, 100, "gpu")) == {theirs: 50}


def test_claims_are_fenced_and_refused_to_a_buried_worker(db: Database, tmp_path: Path) -> None:
    batch = make_batch(db, tmp_path, "b", 20)
    w = worker(db)
    rows = fair.claim_share(db, w, 10, QUEUE)
    assert all(r.fence == 1 and r.worker == w for r in rows)
    with db.read() as s:
        held = s.execute(select(Request.status, Request.worker).where(Request.id.in_([r.id for r in rows])))
        assert set(held) == {(RequestStatus.RUNNING, w)}
    with db.write() as s:  # what the reaper does: rows back to the queue (fences bumped), worker row gone
        claims.requeue_rows_of(s, w)
        s.execute(Worker.__table__.delete().where(Worker.id == w))
    with pytest.raises(WorkerGone):
        fair.claim_share(db, w, 10, QUEUE)
    again = fair.claim_share(db, worker(db, "w2"), 20, QUEUE)
    assert {r.id: r.fence for r in again if r.id in {x.id for x in rows}} == {r.id: 3 for r in rows}
    stale = [Outcome(r.id, r.fence, RequestStatus.SUCCEEDED) for r in rows]
    assert len(stale) == 10 and claims.record(db, stale) == stale  # every stale-fence write refused
    with db.read() as s:  # and none of them written: the rows stay the new holder's, running
        held = s.execute(select(Request.status, Request.worker).where(Request.id.in_([r.id for r in rows])))
        assert sorted(held) == [(RequestStatus.RUNNING, "w2")] * 10
    assert len(again) == 20 and {r.batch_id for r in again} == {batch}


def test_concurrent_claims_never_take_a_row_twice(db: Database, tmp_path: Path) -> None:
    make_batch(db, tmp_path, "a", 600)
    make_batch(db, tmp_path, "b", 600, 2)
    names = [worker(db, f"w{i}") for i in range(4)]
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while rows := fair.claim_share(db, name, 25, QUEUE):
            with lock:
                taken.extend(r.id for r in rows)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(taken) == 1200 and len(set(taken)) == 1200


def test_published_capacity_always_covers_the_queued_rows(db: Database, tmp_path: Path) -> None:
    """Messages are consumed in random order, rows released back to the queue now and then, a batch paused
    and resumed: every row ends final, and no message is ever short of a row it was published for."""
    chunk, rng = 40, random.Random(7)
    sizes = (300, 120, 37)
    ids = [make_batch(db, tmp_path, f"b{i}", n, 1 + i) for i, n in enumerate(sizes)]
    queue = [(b, chunk) for b, n in zip(ids, sizes, strict=True) for _ in range(math.ceil(n / chunk))]
    w = worker(db)
    batches.pause_batch(db, ids[1], "test")
    for step in range(10_000):
        if step == 5:  # resume: its rows queued again, capacity published for them (as `resume` does)
            batches.requeue_final(db, ids[1], [])
            rows = recovery.mark_enqueued(db, ids[1], QUEUE)
            queue += [(ids[1], chunk)] * math.ceil(rows / chunk)
        if not queue:
            break
        hint, capacity = queue.pop(rng.randrange(len(queue)))
        rows = fair.claim_share(db, w, capacity, QUEUE, hint=hint)
        released = rows[: rng.randrange(len(rows) + 1)] if rng.random() < 0.2 else []
        claims.record(db, [Outcome(r.id, r.fence, RequestStatus.QUEUED) for r in released])
        queue += [(hint, chunk)] * math.ceil(len(released) / chunk)  # the reaper re-publishes freed rows
        finish(db, [r for r in rows if r not in released])
    with db.read() as s:
        left = s.scalar(select(text("count(*)")).select_from(Request).where(Request.status != "succeeded"))
    assert left == 0 and not queue


def test_take_unsent_only_takes_rows_of_the_workers_queues(db: Database, tmp_path: Path) -> None:
    mine, theirs = make_batch(db, tmp_path, "mine", 5), make_batch(db, tmp_path, "theirs", 5, queue="gpu")
    with db.write() as s:
        s.execute(update(Request).values(enqueued_at=None))
    taken = recovery.take_unsent(db, older_than=0, queues=[QUEUE])
    assert {b for b, _ in taken} == {mine}
    assert fair.batch_queues(db, [mine, theirs, "nope"]) == {mine: QUEUE, theirs: "gpu"}


def test_priority_is_checked_and_read(db: Database, tmp_path: Path) -> None:
    batch = make_batch(db, tmp_path, "p", 3, priority=7)
    assert fair.priorities(db, [batch]) == {batch: 7}
    with pytest.raises(ValueError):
        fair.set_priority(db, batch, 0)


def test_an_engine_that_beats_while_its_burial_waits_is_not_buried(db: Database, tmp_path: Path) -> None:
    """The reaper saw beat 0 for a lease; the engine beats before the reaper gets the write lock (a paused
    SQLite writer resumed): it is alive, keeps its rows, and nobody is told it is dead."""
    batch_id = make_batch(db, tmp_path, "b", 10)
    w = worker(db)
    rows = fair.claim_share(db, w, 10, QUEUE)
    assert claims.beat(db, w)  # beat 1
    assert recovery.bury(db, w, 0) is None
    with db.read() as s:
        assert s.scalar(select(Worker.beat).where(Worker.id == w)) == 1
        running = s.scalars(select(Request.worker).where(Request.batch_id == batch_id)).all()
    assert running == [w] * len(rows)
    freed = recovery.bury(db, w, 1)  # silent at beat 1: buried, its rows back to the queue
    assert freed is not None and len(freed) == len(rows)
    assert not claims.beat(db, w)  # its next beat finds it declared dead


def test_a_watcher_that_was_not_watching_does_not_count_its_own_pause_as_silence(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher stopped for 10 s (SIGSTOP; on SQLite while holding the write lock, so nobody could beat)
    wakes up: it watches afresh instead of burying engines that were silent only while it slept."""
    clock = [1000.0]
    monkeypatch.setattr(recovery.time, "monotonic", lambda: clock[0])
    claims.register(db, "elsewhere", "another-host", 1, 4.0)
    reaper = recovery.Reaper(db)

    def sweep_after(seconds: float) -> None:
        clock[0] += seconds
        reaper.sweep()

    sweep_after(0)
    sweep_after(10)  # the watcher's own pause: more than the engine's lease
    sweep_after(1)
    sweep_after(1)
    sweep_after(1)
    with db.read() as s:
        assert s.scalar(select(Worker.id).where(Worker.id == "elsewhere")) == "elsewhere"
    sweep_after(1)  # 4 s of silence watched: dead
    with db.read() as s:
        assert s.scalar(select(Worker.id).where(Worker.id == "elsewhere")) is None
