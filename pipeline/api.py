"""The Python API: `results = pipeline.run(rows)`, the same store and engine as the commands.

    import pipeline
    rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}]
    for r in pipeline.run(rows, endpoint="chat"):
        print(r["custom_id"], r["status"], r["output"], r["usage"])

`requests` is a path to a job file, or an iterable of dicts: Batch API lines (`custom_id`, `method`, `url`,
`body`) or, with `endpoint`, bare request bodies. They are validated and stored like a job file (the same
rows twice are the same batch: a second call sends nothing it already has), sent at the rate limit, and the
results come back as the `jsonl` export's objects, in the order given: `custom_id`, `status`, `output`,
`finish_reasons`, `usage`, `response`, `error`, `attempts`, `latency_ms`.

It runs anywhere: on the main thread, off it, and inside a running event loop (a notebook), where the work
runs on a thread of its own. It never installs signal handlers. `arun` is the same for async code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import ConnectError, DuplicateBatch
from pipeline.export import iter_records
from pipeline.jobs.intake import store_job_file
from pipeline.ratelimit import make_limiter
from pipeline.send.runner import new_event_loop, run_batch
from pipeline.settings import Settings
from pipeline.store.db import Database, open_database

Requests = Iterable[Mapping[str, Any]] | str | os.PathLike[str]


def run(
    requests: Requests,
    *,
    endpoint: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Store and send `requests`, then return every result (see the module docstring).

    `options` are Settings fields (`base_url`, `max_in_flight`, `data_dir`, `database_url`, `rpm`, ...),
    over the environment as the command line's flags are; or pass a whole `settings`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(arun(requests, endpoint=endpoint, settings=settings, **options))
    # Inside a running loop (a notebook): the work gets a thread and a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pipeline") as pool:
        return pool.submit(run, requests, endpoint=endpoint, settings=settings, **options).result()


async def arun(
    requests: Requests,
    *,
    endpoint: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """`run` for async code: sends on the running event loop."""
    settings = settings or Settings.load(options)
    limiter = make_limiter(settings, settings.redis_url)
    db = await asyncio.to_thread(open_database, settings.db_url)
    batch_id = await asyncio.to_thread(_store, db, settings, requests, endpoint)
    stats = await run_batch(settings, db, batch_id, limiter, signals=False)
    if stats.stalled is not None:  # the database refused writes too long: sending stopped
        raise ConnectError(
            f"{stats.stalled}: sending stopped; run the same requests again once it takes writes"
        )
    return await asyncio.to_thread(lambda: list(results(batch_id, settings=settings)))


def results(batch_id: str, *, settings: Settings | None = None, **options: Any) -> Iterator[dict[str, Any]]:
    """The results of a stored batch, streamed in the order its requests were given."""
    settings = settings or Settings.load(options)
    yield from iter_records(open_database(settings.db_url, create=False), batch_id)


def _store(db: Database, settings: Settings, requests: Requests, endpoint: str | None) -> str:
    """The batch of these requests: stored now, or found when the same requests were stored before."""
    if isinstance(requests, str | os.PathLike):
        return _intake(db, settings, str(requests), endpoint)
    with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
        path = Path(tmp) / "requests.jsonl"
        with open(path, "wb") as fh:
            for row in requests:
                fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        return _intake(db, settings, str(path), endpoint, source="python: pipeline.run", base_dir=Path.cwd())


def _intake(db: Database, settings: Settings, path: str, endpoint: str | None, **where: Any) -> str:
    try:
        return store_job_file(db, settings, path, endpoint=endpoint, **where).batch_id
    except DuplicateBatch as dup:
        return dup.batch_id
