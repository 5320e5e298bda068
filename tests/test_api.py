"""The Python API: the handle (submit, results streamed as stored, wait, pause, cancel, resume, prefixes), run
and arun, the project header. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings
from pipeline.store.models import BatchState
from tests.conftest import TEST_KEY, invoke
from tests.helpers import chat_file, chat_line
from tests.services import Fleet

#: A prompt the fake answers after this many seconds: the requests that must still be out when the first
#: result is read. The margin is wide so that a loaded machine changes nothing: the test asserts an order.
SLOW = 'fake:{"latency": 4}'


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


def rows(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{prefix}{i}"}]} for i in range(n)
    ]


def test_submit_streams_each_result_once_as_it_is_stored(fake: FakeServer, database_url: str) -> None:
    lines = [chat_line("fast", "fast")] + [chat_line(f"slow-{i}", SLOW) for i in range(5)]
    batch = pipeline.submit(lines, base_url=fake.url, database_url=database_url)
    seen: list[str] = []
    for result in batch:
        if not seen:  # the first answer is read while the slow ones are still out
            assert batch.state == BatchState.IN_PROGRESS
            assert batch.counts["succeeded"] < 6
        seen.append(result["custom_id"])
        assert result["status"] == "succeeded"
    assert seen[0] == "fast" and sorted(seen) == sorted(["fast", *(f"slow-{i}" for i in range(5))])
    assert batch.done and batch.state == BatchState.COMPLETED
    assert batch.counts == {
        "total": 6,
        "queued": 0,
        "running": 0,
        "succeeded": 6,
        "failed": 0,
        "cancelled": 0,
    }
    assert batch.cost > 0 and batch.status()["prices"]["as_of"]
    assert fake.stats()["received"] == 6


def test_run_returns_the_batch_done_and_iterating_it_gives_the_results_in_order(fake: FakeServer) -> None:
    batch = pipeline.run(rows(20), endpoint="chat", base_url=fake.url, progress=False)
    assert isinstance(batch, pipeline.Batch) and batch.state == BatchState.COMPLETED
    results = list(batch)
    assert [r["custom_id"] for r in results] == [f"line-{i + 1}" for i in range(20)]
    assert [r["output"] for r in results] == [f"echo: q{i}" for i in range(20)]
    assert list(pipeline.run(rows(20), endpoint="chat", base_url=fake.url)) == results  # the same batch
    assert list(pipeline.results(batch.id)) == results
    assert fake.stats()["received"] == 20


def test_a_wrong_key_raises_batch_paused_from_run_wait_and_the_iteration(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")
    with pytest.raises(pipeline.BatchPaused) as info:
        pipeline.run(rows(3), endpoint="chat", base_url=fake.url, api_key_env="WRONG_KEY")
    paused = info.value
    assert isinstance(paused, pipeline.PipelineError) and "401" in paused.reason
    assert paused.batch_id in str(paused) and "resume" in str(paused) and "sk-wrong" not in str(paused)

    batch = pipeline.batch(paused.batch_id)
    with pytest.raises(pipeline.BatchPaused):
        batch.wait()
    with pytest.raises(pipeline.BatchPaused):
        list(batch)
    assert batch.wait(raise_on_pause=False).state == BatchState.PAUSED
    assert list(batch.stream(raise_on_pause=False)) == []
    assert "401" in (batch.pause_reason or "")

    results = list(batch.resume(api_key_env="OPENAI_API_KEY").wait())  # to the fake, with the right key
    assert [r["status"] for r in results] == ["succeeded"] * 3


def test_a_resume_from_another_handle_while_the_paused_run_drains_is_not_undone(fake: FakeServer) -> None:
    # The first request is refused 401 at once (the batch pauses, run() raises); the second is refused 401
    # too, but only after LATE seconds: it is still out when another handle resumes the batch. Its late
    # 401 answers the request sent before the resume, so it must not pause the batch again, and the run
    # that paused must stop claiming: the resumed run sends the rest. Each directive holds once.
    late = 5
    lines = [
        chat_line("refused", 'fake:{"status": 401, "code": "invalid_api_key", "times": 1}'),
        chat_line(
            "refused-late",
            f'fake:{{"status": 401, "code": "invalid_api_key", "times": 1, "latency": {late}}}',
        ),
        *(chat_line(f"plain-{i}", f"plain {i}") for i in range(3)),
    ]
    with pytest.raises(pipeline.BatchPaused) as info:
        pipeline.run(lines, base_url=fake.url, progress=False)
    resumed = pipeline.batch(info.value.batch_id).resume()
    assert fake.stats()["in_flight"] == 1, "the late 401 must still be out when the batch is resumed"

    results = {r["custom_id"]: r["status"] for r in resumed.wait(timeout=60 + late)}
    assert resumed.state == BatchState.COMPLETED
    assert results == dict.fromkeys(
        ["refused", "refused-late", *(f"plain-{i}" for i in range(3))], "succeeded"
    )
    bodies = fake.stats()["bodies"].values()
    assert sorted(b["received"] for b in bodies) == [1, 1, 1, 2, 2]  # the refused two sent once more each
    assert all(b["answered"] == 1 for b in bodies)  # nothing answered twice


def test_raise_on_pause_false_leaves_the_state_to_say_so(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")
    batch = pipeline.run(
        rows(2), endpoint="chat", base_url=fake.url, api_key_env="WRONG_KEY", raise_on_pause=False
    )
    assert batch.state == BatchState.PAUSED and not batch.done


def test_batch_and_results_resolve_prefixes_as_the_commands_do(
    fake: FakeServer, tmp_path: Path, database_url: str
) -> None:
    with pytest.raises(pipeline.BatchNotFound, match="no batch"):  # "yet" on a new SQLite file, "'abc'" on PG
        pipeline.batch("abc")
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "fleet.db").exists()  # looking never creates a database
    done = pipeline.run(rows(2), endpoint="chat", base_url=fake.url)
    assert pipeline.batch(done.id[:6]).id == done.id
    assert pipeline.batch().id == done.id  # the newest
    assert [r["custom_id"] for r in pipeline.results(done.id[:6])] == ["line-1", "line-2"]
    with pytest.raises(pipeline.BatchNotFound, match="no batch 'nope'"):
        pipeline.results("nope")  # at once, not at the first result


def test_cancel_stops_the_batch_and_the_iteration_ends(fake: FakeServer) -> None:
    batch = pipeline.submit(
        [chat_line(f"c{i}", SLOW) for i in range(30)], base_url=fake.url, max_in_flight=2, progress=False
    )
    batch.cancel().wait()
    assert batch.state == BatchState.CANCELLED
    counts = batch.counts
    assert counts["cancelled"] >= 28 and counts["succeeded"] + counts["cancelled"] == 30
    assert len(list(batch)) == 30


def test_async_twins_and_async_iteration(fake: FakeServer) -> None:
    async def notebook_cell() -> list[str]:
        batch = await pipeline.asubmit(rows(5), endpoint="chat", base_url=fake.url)
        ids = [r["custom_id"] async for r in batch]
        assert (await batch).done
        again = await pipeline.arun(rows(5), endpoint="chat", base_url=fake.url)
        assert again.id == batch.id
        return ids

    assert sorted(asyncio.run(notebook_cell())) == [f"line-{i}" for i in range(1, 6)]
    assert fake.stats()["received"] == 5


def test_tables_when_installed_and_a_clear_error_when_not(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    batch = pipeline.run(rows(3), endpoint="chat", base_url=fake.url)
    frame = batch.to_pandas()
    assert list(frame["custom_id"]) == ["line-1", "line-2", "line-3"]
    assert list(frame["output"]) == ["echo: q0", "echo: q1", "echo: q2"]
    assert set(frame["status"]) == {"succeeded"} and frame["total_tokens"].min() > 0
    table = batch.to_arrow()
    assert table.num_rows == 3 and table.column("model").to_pylist() == ["gpt-4o-mini"] * 3
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(pipeline.ConfigError, match="pip install pandas"):
        batch.to_pandas()


def test_progress_is_a_line_on_stderr_and_off_with_progress_false(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = pipeline.run(rows(2), endpoint="chat", base_url=fake.url)
    err = capsys.readouterr().err
    assert f"batch {batch.id}: 2/2 done (2 succeeded)" in err and "[completed]" in err
    pipeline.run(rows(2, "other"), endpoint="chat", base_url=fake.url, progress=False)
    assert "done" not in capsys.readouterr().err


def test_errors_show_their_details_and_the_version_is_known(fake: FakeServer) -> None:
    bad = [{"model": "m"}, {"model": "m", "messages": []}, {"nope": 1}] * 3
    with pytest.raises(pipeline.JobFileError) as info:
        pipeline.submit(bad, endpoint="chat", base_url=fake.url)
    message = str(info.value).splitlines()
    assert message[0] == "9 invalid line(s):" and message[-1] == "... and 4 more"
    assert message[1].endswith(":1: body.messages: required") and ":2: " in message[2]
    assert fake.stats()["received"] == 0
    assert pipeline.__version__ == importlib.metadata.version("pipeline-bulk")


@pytest.mark.integration
def test_submit_to_the_workers_and_follow_the_batch_from_here(
    fake: FakeServer, make_fleet: Callable[..., Fleet], redis_url: str, database_url: str
) -> None:
    fleet = make_fleet(
        OPENAI_API_KEY=TEST_KEY,
        OPENAI_BASE_URL=fake.url,
        PIPELINE_DATABASE_URL=database_url,
        PIPELINE_BROKER_URL=redis_url,
    )
    fleet.start("--max-in-flight", "20")
    where = {"database_url": database_url, "broker_url": redis_url, "base_url": fake.url}
    batch = pipeline.submit(rows(30), endpoint="chat", workers=True, **where)
    assert sorted(r["custom_id"] for r in batch) == sorted(f"line-{i}" for i in range(1, 31))
    assert batch.state == BatchState.COMPLETED and fake.stats()["received"] == 30
    again = pipeline.submit(rows(30), endpoint="chat", workers=True, **where)
    assert again.id == batch.id and again.wait().done  # stored before: not enqueued again
    assert fake.stats()["received"] == 30


# --- run and arun: the whole batch, from a script, a loop or a thread ----------------------------------


def test_run_from_python_twice_sends_once(fake: FakeServer, tmp_path: Path) -> None:
    rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(20)]
    results = list(pipeline.run(rows, endpoint="chat", base_url=fake.url))
    assert [r["custom_id"] for r in results] == [f"line-{i + 1}" for i in range(20)]
    assert all(r["status"] == "succeeded" and r["output"] == f"echo: q{i}" for i, r in enumerate(results))
    assert results[0]["usage"]["total_tokens"] > 0
    again = list(pipeline.run(rows, endpoint="chat", base_url=fake.url))
    assert again == results
    assert fake.stats()["received"] == 20


def test_run_from_python_takes_batch_lines_or_a_path(fake: FakeServer, tmp_path: Path) -> None:
    lines = [chat_line(f"id-{i}", f"hello {i}") for i in range(5)]
    assert [r["custom_id"] for r in pipeline.run(lines, base_url=fake.url)] == [f"id-{i}" for i in range(5)]
    path = chat_file(tmp_path / "jobs.jsonl", 3)
    assert len(list(pipeline.run(path, base_url=fake.url))) == 3


def test_run_inside_a_running_event_loop_and_from_a_thread(fake: FakeServer, tmp_path: Path) -> None:
    rows = [chat_line(f"nb-{i}", f"notebook {i}") for i in range(5)]

    async def notebook_cell() -> list[dict[str, Any]]:
        return list(pipeline.run(rows, base_url=fake.url))  # blocking call from inside a loop, as in Jupyter

    assert len(asyncio.run(notebook_cell())) == 5
    assert len(list(asyncio.run(pipeline.arun(rows, base_url=fake.url)))) == 5  # the same batch: nothing sent

    found: list[Any] = []
    thread_rows = [chat_line(f"th-{i}", f"thread {i}") for i in range(5)]
    thread = threading.Thread(target=lambda: found.append(list(pipeline.run(thread_rows, base_url=fake.url))))
    thread.start()
    thread.join(timeout=60)
    assert len(found[0]) == 5 and all(r["status"] == "succeeded" for r in found[0])
    assert fake.stats()["received"] == 10


def test_invalid_rows_from_python_raise_with_their_line_numbers(fake: FakeServer) -> None:
    with pytest.raises(pipeline.JobFileError) as info:
        pipeline.run([{"model": "m"}], endpoint="chat", base_url=fake.url)
    assert "body.messages: required" in str(info.value.errors[0])
    assert fake.stats()["received"] == 0


# --- the project header --------------------------------------------------------------------------------


def test_the_project_is_sent_as_openai_project_and_splits_the_limit_key(
    fake: FakeServer, tmp_path: Path
) -> None:
    from pipeline.endpoints import by_url
    from pipeline.ratelimit.local import LocalLimiter
    from pipeline.send.routing import Routes
    from pipeline.store.claims import Claimed

    settings = Settings.load({"project": "proj_123", "base_url": fake.url})
    row = Claimed(1, "b", "c", "/v1/chat/completions", '{"model": "m", "messages": []}', 0, 1)
    route = Routes(settings, LocalLimiter(), set().add).add("b", None)
    key = route.targets(by_url(row.url), "m")[0].key
    assert key.project == "proj_123" and "proj_123" in str(key)
    result = invoke(
        "run", str(chat_file(tmp_path / "p.jsonl", 2)), "--base-url", fake.url, "--project", "proj_123"
    )
    assert result.exit_code == 0, result.stderr
    assert fake.stats()["projects"] == {"proj_123": 2}
