"""The API key lands nowhere: the database (every column of every table), Redis (every key, every value,
Celery's messages decoded), worker and run logs, saved traceback files, the files uploaded to the Batch API,
the metrics, every export, command output, exceptions and reprs. On SQLite and PostgreSQL.

Each test uses a key of its own, made up at random, so that any 12 characters of it found anywhere can only
have come from it (tests/leaks.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import pipeline
from pipeline.cli import EXIT_BUG, EXIT_PAUSED
from pipeline.endpoints import by_url
from pipeline.fakeapi import FakeConfig, FakeServer
from pipeline.ratelimit.local import LocalLimiter
from pipeline.send.classify import classify
from pipeline.send.engine import Engine
from pipeline.send.routing import Routes
from pipeline.send.transport import Transport
from pipeline.settings import Settings
from pipeline.store.claims import Claimed
from pipeline.store.db import open_database
from tests.conftest import invoke
from tests.helpers import chat_file, chat_line, write_jsonl
from tests.leaks import dump_database, dump_redis, fake_files, leaks
from tests.services import Fleet, free_port
from tests.test_fleet import fleet_env, status, wait_final


def new_key() -> str:
    return f"sk-leaktest-{secrets.token_hex(24)}"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch, database_url: str) -> str:
    """This test's key, in the environment with the test's database."""
    made = new_key()
    monkeypatch.setenv("OPENAI_API_KEY", made)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    monkeypatch.setenv("PIPELINE_BATCH_POLL_SECONDS", "0.3")
    return made


@pytest.fixture
def keyed_fake(key: str) -> Iterator[FakeServer]:
    """The fake API accepting only this test's key."""
    with FakeServer(FakeConfig(api_key=key, seed=1)) as server:
        yield server


def test_the_search_finds_a_key_cut_or_masked() -> None:
    made = new_key()
    secret = made.rsplit("-", 1)[-1]
    assert leaks({"whole": f"Authorization: Bearer {made}"}, [made]) != []
    assert leaks({"cut": f"...{secret[5:17]}..."}, [made]) == [("cut", secret[5:17])]
    assert leaks({"masked": f"{made[:10]}****{made[-4:]}"}, [made]) == []


def test_the_key_leaks_nowhere_in_process(
    key: str,
    keyed_fake: FakeServer,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, places = keyed_fake, dict[str, str]()
    fake.config.error_rate = 0.2
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(30)]
    lines.append(chat_line("bad", 'fake:{"status": 400, "code": "invalid_value"}'))
    places |= command("run", str(write_jsonl(tmp_path / "a.jsonl", lines)), "--base-url", fake.url)
    places["python api"] = repr(
        pipeline.run([chat_line(f"p{i}", f"p{i}") for i in range(5)], base_url=fake.url)
    )
    batch_api = write_jsonl(tmp_path / "c.jsonl", [chat_line(f"c{i}", f"c{i}") for i in range(5)])
    places |= command("run", str(batch_api), "--via", "batch-api", "--base-url", fake.url)
    places |= command("run", str(chat_file(tmp_path / "d.jsonl", 3, "d")), "--base-url", dead_url())
    # A wrong key: the API answers 401 with (a masked form of) it in its message; the batch pauses and the
    # answer is stored with the attempt.
    wrong_key = new_key()
    monkeypatch.setenv("OPENAI_API_KEY", wrong_key)
    paused = invoke("run", str(chat_file(tmp_path / "b.jsonl", 3, "b")), "--base-url", fake.url)
    assert paused.exit_code == EXIT_PAUSED
    places["wrong key run"] = paused.stdout + paused.stderr
    monkeypatch.setenv("OPENAI_API_KEY", key)
    places |= saved_traceback(fake, tmp_path, monkeypatch)
    places |= outputs(tmp_path)

    settings = Settings.load()
    engine = Engine(settings, open_database(settings.db_url), LocalLimiter())
    places["reprs"] = " ".join([repr(settings), str(settings), repr(settings.api_key), repr(engine)])
    places["log records"] = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    places["database"] = dump_database(database_url)
    data_files = [p for p in Path(settings.data_dir).rglob("*") if p.is_file()]
    places["data dir"] = b"".join(p.read_bytes() for p in data_files).decode("latin-1")
    places |= fake_files(fake.url, key)

    assert leaks(places, [key, wrong_key]) == []
    # The places hold what they should: the search was not looking at nothing.
    assert "invalid_api_key" in places["database"], "the 401 answers were not stored"
    assert any(name.startswith("fake file pipeline-") for name in places), "no Batch API file was uploaded"
    assert "RuntimeError" in places["traceback file"]


def command(*args: str) -> dict[str, str]:
    """Run a command in process: its output, by its arguments."""
    result = invoke(*args)
    return {" ".join(args[:2]) + f" ({args[-1]})": result.stdout + result.stderr}


def dead_url() -> str:
    """An API URL where nothing listens: every attempt a connection error, then the breaker pauses."""
    return f"http://127.0.0.1:{free_port()}/v1"


def saved_traceback(fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A bug inside `pipeline run` whose message holds the objects that hold the key: one line on stderr
    and the traceback saved to a file."""
    from pipeline.cli import sending

    def broken(settings: Settings, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"a bug, with {settings!r} and {settings.api_key!r}")

    folder = tmp_path / "tmp"
    folder.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(folder))
        patch.setattr(sending.dispatch, "run_here", broken)
        result = invoke("run", str(chat_file(tmp_path / "e.jsonl", 2, "e")), "--base-url", fake.url)
    assert result.exit_code == EXIT_BUG and "traceback in" in result.stderr, result.stderr
    saved = list(folder.glob("pipeline-error-*.txt"))
    assert len(saved) == 1
    return {"bug's stderr": result.stderr, "traceback file": saved[0].read_text()}


def outputs(tmp_path: Path) -> dict[str, str]:
    """Every batch in every export format, to stdout and to a file, and what status, batches and errors
    print."""
    found: dict[str, str] = {}
    listed = invoke("batches", "--json").stdout.splitlines()
    batch_ids = [orjson.loads(line)["batch"] for line in listed]
    assert len(batch_ids) == 6, listed
    for batch_id in batch_ids:
        for fmt in ("csv", "jsonl", "openai"):
            found[f"export {batch_id} {fmt}"] = invoke("export", batch_id, "--format", fmt).stdout
            out = tmp_path / f"export-{batch_id}.{fmt}"
            assert invoke("export", batch_id, "--format", fmt, "-o", str(out)).exit_code == 0
            found[f"export file {batch_id} {fmt}"] = out.read_text()
        for args in (("status", batch_id), ("status", batch_id, "--json"), ("errors", batch_id)):
            result = invoke(*args)
            found[" ".join(args)] = result.stdout + result.stderr
    for args in (("batches",), ("batches", "--json")):
        found[" ".join(args)] = invoke(*args).stdout
    # The openai format has a line for each finished request only: the paused batches and the one the bug
    # stopped have none.
    empty = [name for name, text in found.items() if name.startswith("export ") and not text]
    assert len(empty) == 2 * 3 and all(name.endswith(" openai") for name in empty), empty
    return found


def test_errors_from_real_failures_hold_no_key(
    key: str, keyed_fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The errors the transport and the classifier make of real failures, and every error they chain to."""
    fake, wrong_key = keyed_fake, new_key()
    row = Claimed(
        1, "b", "c", "/v1/chat/completions", orjson.dumps(chat_line("c", "q")["body"]).decode(), 0, 1
    )
    big = Claimed(
        2,
        "b",
        "d",
        "/v1/chat/completions",
        orjson.dumps(chat_line("d", 'fake:{"pad": 5000}')["body"]).decode(),
        0,
        1,
    )
    hang = FakeServer(FakeConfig(api_key=key, hang_rate=1.0))
    cases = {
        "401": ({"base_url": fake.url}, wrong_key, row),
        "dead url": ({"base_url": dead_url()}, key, row),
        "timeout": ({"base_url": "", "timeout": 0.5}, key, row),
        "too large": ({"base_url": fake.url, "max_response_bytes": 1000}, key, big),
    }
    texts: dict[str, str] = {}
    with hang:
        for name, (overrides, sent_key, sent) in cases.items():
            monkeypatch.setenv("OPENAI_API_KEY", sent_key)
            settings = Settings.load({**overrides, "base_url": overrides["base_url"] or hang.url})
            exchange = asyncio.run(post(settings, sent))
            error = exchange.error or classify(exchange.status or 0, exchange.headers, exchange.raw)
            assert error is not None, name
            texts[name] = " ".join(f"{exc!s} {exc!r}" for exc in chain(error))
    assert leaks(texts, [key, wrong_key]) == []
    assert "Incorrect API key" in texts["401"] and "no answer within" in texts["timeout"], texts


async def post(settings: Settings, row: Claimed) -> Any:
    """One exchange of `row` through the account of `settings`, as the engine sends it."""
    endpoint = by_url(row.url)
    route = Routes(settings, LocalLimiter(), set().add).add(row.batch_id, None)
    target = route.targets(endpoint, str(orjson.loads(row.body)["model"]))[0]
    async with Transport(settings, lambda sha: b"") as http:
        return await http.post(row, endpoint, target, route.lanes[target.index])


def chain(error: BaseException) -> Iterator[BaseException]:
    """The error and every one it was raised from or during."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


@pytest.mark.integration
def test_the_key_leaks_nowhere_in_a_fleet(
    key: str,
    keyed_fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Celery's messages and the shared limiter and spend cap in Redis, a worker's log at DEBUG and its
    metrics, a `pipeline run` process's output beside it."""
    fake = keyed_fake
    fake.config.rpm = 6000  # limits learned and kept in Redis
    env = {**fleet_env(fake, database_url, redis_url), "OPENAI_API_KEY": key, "PIPELINE_REDIS_URL": redis_url}
    fleet = make_fleet(**env)
    submitted = fleet.cli("submit", str(chat_file(tmp_path / "jobs.jsonl", 200)), "--max-cost", "5")
    batch_id = submitted.stdout.split()[-1]
    places = {"submit": submitted.stdout + submitted.stderr, "redis, queued": dump_redis(redis_url)}
    assert batch_id in places["redis, queued"], "no Celery message was read (no worker has run yet)"
    port = free_port()
    worker = fleet.start("--loglevel", "DEBUG", "--metrics-port", str(port))
    assert wait_final(fleet, batch_id, 120)["succeeded"] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        places["metrics"] = resp.read().decode()
    beside = fleet.cli("run", str(chat_file(tmp_path / "run.jsonl", 50, "run")), "--max-cost", "5")
    places["run beside"] = beside.stdout + beside.stderr
    places["status"] = str(status(fleet, batch_id))
    places["redis, after"] = dump_redis(redis_url)
    assert worker.terminate(timeout=60) == 0, worker.output()
    places["worker log"] = worker.output()
    places["database"] = dump_database(database_url)

    assert leaks(places, [key]) == []
    assert "pipeline_requests_total" in places["metrics"] and "pipeline:limit:" in places["redis, after"]
