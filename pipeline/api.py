"""The Python API: the same store and engine as the commands, with a handle on each batch.

    import pipeline
    rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}]
    batch = pipeline.submit(rows, endpoint="chat")     # stored; sent on a thread of this process
    for r in batch:                                    # each result as it is stored
        print(r["custom_id"], r["status"], r["output"], r["usage"])
    pipeline.run(rows, endpoint="chat")                # the same, and wait for the end: a Batch

`requests` is a path to a job file, or an iterable of dicts: Batch API lines (`custom_id`, `method`, `url`,
`body`) or, with `endpoint`, bare request bodies. They are validated and stored like a job file (the same
rows twice are the same batch: a second call sends nothing it already has). Results are the `jsonl`
export's objects: `custom_id`, `status`, `output`, `finish_reasons`, `usage`, `response`, `error`,
`attempts`, `latency_ms`.

`submit` sends on a thread of this process with its own event loop (a notebook, a script, a thread: no
signal handlers, never the caller's loop), or with `workers=True` enqueues the batch for `pipeline worker`
processes, as the `submit` command does. `run` is `submit(...).wait()`. Each returns a `Batch`
(pipeline/handle.py); `batch(id)` makes one for any stored batch, by id or unique prefix, as the commands
take them.

`run` used to return a list: a `Batch` iterates over the same results in the same order once the batch is
done, so `for r in pipeline.run(rows)` is unchanged; `list(pipeline.run(rows))` is the old list.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from pipeline.accounts import pool_from_settings
from pipeline.batchapi.options import BatchApiOptions, OnExpire
from pipeline.errors import DuplicateBatch
from pipeline.handle import Batch, start_here
from pipeline.jobs.intake import store_job_file
from pipeline.prices import load_prices
from pipeline.ratelimit import limit_table
from pipeline.settings import Settings
from pipeline.store import batches, fair
from pipeline.store.db import Database, open_database
from pipeline.store.models import Via

__all__ = ["Requests", "arun", "asubmit", "batch", "results", "run", "submit"]

Requests = Iterable[Mapping[str, Any]] | str | os.PathLike[str]


def submit(
    requests: Requests,
    *,
    endpoint: str | None = None,
    workers: bool = False,
    skip_invalid: bool = False,
    force: bool = False,
    reuse: bool = False,
    max_cost: float | None = None,
    via: str = "direct",
    priority: int | None = None,
    queue: str | None = None,
    raise_on_pause: bool = True,
    progress: bool = True,
    settings: Settings | None = None,
    **options: Any,
) -> Batch:
    """Store `requests` as a batch and start sending it; returns its `Batch` at once.

    Without workers (the default) the batch is sent on a thread of this process (it stops with the
    process: the next `run` or `resume` carries on); `workers=True` enqueues it for `pipeline worker`
    processes on `queue`. The other arguments are the `submit` command's flags: `skip_invalid`, `force`,
    `reuse`, `max_cost` (USD), `via` ("direct" or "batch-api"), `priority`. `options` are Settings fields
    (`base_url`, `max_in_flight`, `data_dir`, `database_url`, `rpm`, `api_key_env`, ...) over the
    environment, as the flags are; or pass a whole `settings`. `raise_on_pause` and `progress` are the
    defaults of the handle's `wait()` and iteration.
    """
    settings = settings or Settings.load(options)
    if not workers:
        pool_from_settings(settings).require_keys()
    limit_table(settings)  # a bad limits or prices file stores nothing
    load_prices(settings)
    db = open_database(settings.db_url)
    app = _broker(settings) if workers else None  # before intake: a batch nobody can receive is not stored
    batch_id, new = _store(db, settings, requests, endpoint, skip_invalid, force, reuse, max_cost, via)
    if priority is not None:
        fair.set_priority(db, batch_id, priority)
    background = start_here(settings, db, batch_id) if app is None else None
    if app is not None and new:  # a batch submitted before is not enqueued again, as the command does
        from pipeline import dispatch

        if via == Via.BATCH_API.value:
            dispatch.plan_parts(db, batch_id)
        dispatch.enqueue(app, settings, db, batch_id, queue)
    return Batch(
        batch_id, settings, db, background=background, raise_on_pause=raise_on_pause, progress=progress
    )


async def asubmit(requests: Requests, **kwargs: Any) -> Batch:
    """`submit` for async code: the intake runs on a thread, the event loop stays free."""
    return await asyncio.to_thread(lambda: submit(requests, **kwargs))


def run(requests: Requests, **kwargs: Any) -> Batch:
    """`submit(requests, **kwargs).wait()`: store, send, and return the `Batch` once it is completed (or
    cancelled). Raises BatchPaused when it pauses (a wrong key, no quota, the spend cap...), unless
    `raise_on_pause=False`. Iterating the batch gives every result in the order given."""
    return submit(requests, **kwargs).wait()


async def arun(requests: Requests, **kwargs: Any) -> Batch:
    """`run` for async code: `await pipeline.arun(rows)`."""
    handle = await asubmit(requests, **kwargs)
    return await handle.wait_async()


def batch(
    batch_id: str | None = None, *, settings: Settings | None = None, progress: bool = True, **options: Any
) -> Batch:
    """The `Batch` of a stored batch: by id or any unique prefix of it, as the commands take them (None:
    the newest). BatchNotFound when there is none (or the prefix is ambiguous); never creates a database."""
    settings = settings or Settings.load(options)
    db = open_database(settings.db_url, create=False)
    return Batch(batches.get_batch(db, batch_id).id, settings, db, progress=progress)


def results(
    batch_id: str | None = None, *, settings: Settings | None = None, **options: Any
) -> Iterator[dict[str, Any]]:
    """Every request of a stored batch with its answer so far, streamed in the order given; the batch by
    id or unique prefix (None: the newest). BatchNotFound, at once, when there is none."""
    return batch(batch_id, settings=settings, **options).results()


def _broker(settings: Settings) -> Any:
    from pipeline import dispatch

    return dispatch.connect_broker(settings)


def _store(
    db: Database,
    settings: Settings,
    requests: Requests,
    endpoint: str | None,
    skip_invalid: bool,
    force: bool,
    reuse: bool,
    max_cost: float | None,
    via: str,
) -> tuple[str, bool]:
    """The batch of these requests, and whether it is new: stored now, or found when the same requests
    were stored before (then a `max_cost` given becomes its cap, as `pipeline run` does)."""
    intake = functools.partial(
        store_job_file,
        db,
        settings,
        endpoint=endpoint,
        skip_invalid=skip_invalid,
        force=force,
        reuse=reuse,
        max_cost_usd=max_cost,
        via=Via(via),
        batch_api=BatchApiOptions(OnExpire.RESUBMIT, settings.part_size, settings.part_bytes),
    )
    try:
        if isinstance(requests, str | os.PathLike):
            return intake(str(requests)).batch_id, True
        with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
            path = Path(tmp) / "requests.jsonl"
            with open(path, "wb") as fh:
                for row in requests:
                    fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            return intake(str(path), source="python: pipeline.submit", base_dir=Path.cwd()).batch_id, True
    except DuplicateBatch as dup:
        if max_cost is not None:
            batches.set_max_cost(db, dup.batch_id, max_cost)
        return dup.batch_id, False
