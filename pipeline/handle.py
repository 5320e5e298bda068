"""`Batch`: the Python API's handle on a stored batch, wherever it is sent from.

    batch = pipeline.submit(rows, endpoint="chat")   # stored; sending on a thread of this process
    for result in batch:                             # each result as it is stored, then the end
        print(result["custom_id"], result["output"])
    batch.state, batch.counts, batch.cost            # read from the store, as `pipeline status` reads them

Everything is read from the database, so a handle works on any batch: one this process sends on its
background thread (`submit`, `run`), one the workers send (`submit(..., workers=True)`), one a command
made (`pipeline.batch(id)`). A batch that pauses raises `BatchPaused` from `wait()` and the iteration,
unless `raise_on_pause=False`, when they return and `state` says `paused`.

Iterating streams results in the order they are stored (store/cursor.py: each result once, polling every
POLL_SECONDS to POLL_MAX_SECONDS), and ends when the batch is completed or cancelled. A batch that is done
yields all of them in the order its requests were given; `results()` always does.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import replace
from typing import Any

from pipeline.accounts import batch_columns, pool_from_settings
from pipeline.background import Background
from pipeline.display import ProgressLine, in_notebook, progress_text
from pipeline.errors import BatchPaused, ConfigError, PipelineError
from pipeline.export import CSV_COLUMNS, iter_records, records_of
from pipeline.prices import load_prices
from pipeline.report import batch_report
from pipeline.settings import Secret, Settings, check_base_url
from pipeline.store import batches, settle
from pipeline.store.cursor import ResultCursor
from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, BatchState, Dispatch, RequestStatus, Via
from pipeline.store.models import Batch as StoredBatch

__all__ = ["COUNT_KEYS", "Batch"]

#: First wait between two looks at the store; it doubles while nothing changes, up to POLL_MAX_SECONDS.
POLL_SECONDS = 0.05
POLL_MAX_SECONDS = 0.2
#: The counts of `Batch.counts`, as `status --json` has them.
COUNT_KEYS = ("total", *(s.value for s in RequestStatus))


class Batch:
    """A stored batch: its state, counts and cost, waiting for it, cancelling and resuming it, and its
    results (see the module docstring). Made by `pipeline.submit`, `run`, `batch`; not by hand."""

    def __init__(
        self,
        batch_id: str,
        settings: Settings,
        db: Database,
        *,
        background: Background | None = None,
        raise_on_pause: bool = True,
        progress: bool = True,
    ) -> None:
        self.id = batch_id
        self.settings = settings
        self._db = db
        self._background = background
        #: the default of `wait()` and the iteration: raise BatchPaused when the batch pauses
        self.raise_on_pause = raise_on_pause
        #: the default of `wait()`: show a progress line (a notebook's output, or stderr)
        self.progress = progress

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.state.value}>"

    # --- where it stands ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `pipeline status --json` says of the batch (the README's contract), read now."""
        batch = batches.get_batch(self._db, self.id)
        return batch_report(self._db, batch, load_prices(self.settings))

    @property
    def state(self) -> BatchState:
        """in_progress, paused, cancelling, cancelled or completed: read now."""
        return batches.batch_states(self._db, [self.id])[self.id]

    @property
    def done(self) -> bool:
        """Completed or cancelled: nothing of it will change."""
        return self.state.final

    @property
    def counts(self) -> dict[str, int]:
        """Requests by status, and `total`."""
        report = self.status()
        return {key: report[key] for key in COUNT_KEYS}

    @property
    def cost(self) -> float:
        """USD the API charged so far, at the prices in force (`status`'s `cost_usd`)."""
        return float(self.status()["cost_usd"])

    @property
    def pause_reason(self) -> str | None:
        return batches.get_batch(self._db, self.id).pause_reason

    # --- waiting ------------------------------------------------------------------------------------

    def wait(
        self,
        timeout: float | None = None,
        *,
        raise_on_pause: bool | None = None,
        progress: bool | None = None,
    ) -> Batch:
        """Block until the batch is completed or cancelled, it pauses (BatchPaused, unless
        `raise_on_pause=False`), or `timeout` seconds are up (then `done` is False). Returns the batch."""
        line = ProgressLine(self.progress if progress is None else progress, self.settings.progress_seconds)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_SECONDS
        while True:
            ended = self._ended(raise_on_pause)
            if line.enabled:
                line.show(progress_text(self.status()), last=ended)
            if ended or (deadline is not None and time.monotonic() >= deadline):
                return self
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, POLL_MAX_SECONDS)

    async def wait_async(
        self,
        timeout: float | None = None,
        *,
        raise_on_pause: bool | None = None,
        progress: bool | None = None,
    ) -> Batch:
        """`wait()` for async code: the looks run on a thread, the event loop stays free."""
        return await asyncio.to_thread(self.wait, timeout, raise_on_pause=raise_on_pause, progress=progress)

    def __await__(self) -> Generator[Any, None, Batch]:
        return self.wait_async().__await__()

    def _ended(self, raise_on_pause: bool | None) -> bool:
        """Is there nothing more to wait for? Raises what stopped the background run, and BatchPaused."""
        if self._background is not None:
            self._background.check()
        state = self.state
        if state == BatchState.PAUSED:
            if self.raise_on_pause if raise_on_pause is None else raise_on_pause:
                raise BatchPaused(self.id, self.pause_reason)
            return True
        if state.final:
            return True
        if self._background is not None and not self._background.running:
            # The run here ended: every row is final (the state settles after the last write), or the
            # batch paused or was cancelled. Settle it now in case the last write could not.
            settle.settle_states(self._db, [self.id])
            state = self.state
            if state == BatchState.IN_PROGRESS:
                raise PipelineError(
                    f"the run of batch {self.id} ended with requests unsent ({self.counts}); "
                    "batch.resume() sends them"
                )
            return self._ended(raise_on_pause)
        return False

    # --- control ------------------------------------------------------------------------------------

    def cancel(self) -> Batch:
        """Cancel the batch: queued requests are cancelled at once, those in flight finish (`wait()` for
        them). A batch sent through the Batch API has its remote batches cancelled too (needs the key)."""
        from pipeline import dispatch
        from pipeline.store import parts

        batches.cancel_batch(self._db, self.id)
        batch = batches.get_batch(self._db, self.id)
        remote = parts.remote_batches_to_cancel(self._db, self.id)
        if remote and self.settings.api_key is not None:
            dispatch.cancel_remote(self.settings, batch, remote)
        return self

    def resume(
        self, *, max_cost: float | None = None, base_url: str | None = None, api_key_env: str | None = None
    ) -> Batch:
        """Continue a paused batch, as `pipeline resume` does: sent again the way it was (on a thread here,
        or by the workers), to the base URL it was sent to (or `base_url`), with the API key read from the
        environment now (the variable this handle's settings name, or `api_key_env`), and a new spend cap
        when `max_cost` is given."""
        from pipeline import dispatch

        batch = batches.get_batch(self._db, self.id)
        if batch.state in CANCELLED_STATES:
            raise ConfigError(f"batch {self.id} was cancelled; `pipeline retry {self.id} --status cancelled`")
        self.settings = self._fresh_settings(batch, base_url, api_key_env)
        if max_cost is not None:
            batches.set_max_cost(self._db, self.id, max_cost)
        if batch.dispatch == Dispatch.BROKER:
            app = dispatch.connect_broker(self.settings)
            batches.requeue_final(self._db, self.id, [])
            if batch.via == Via.BATCH_API:
                dispatch.plan_parts(self._db, self.id)
            dispatch.enqueue(app, self.settings, self._db, self.id)
            return self
        pool_from_settings(self.settings).require_keys()
        if self._background is not None:
            self._background.join()  # the run that paused stops once its requests in flight are stored
        batches.requeue_final(self._db, self.id, [])
        self._background = start_here(self.settings, self._db, self.id)
        return self

    def _fresh_settings(self, batch: StoredBatch, base_url: str | None, api_key_env: str | None) -> Settings:
        name = api_key_env or self.settings.api_key_env
        key = os.environ.get(name)
        return replace(
            self.settings,
            base_url=check_base_url(base_url) if base_url else batch.base_url,
            organization=batch.organization,
            api_key_env=name,
            api_key=Secret(key) if key else None,
        )

    # --- results ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.stream()

    def stream(self, *, raise_on_pause: bool | None = None) -> Iterator[dict[str, Any]]:
        """Each result as it is stored (the `jsonl` export's object), until the batch is completed or
        cancelled; when it pauses, what is stored and then BatchPaused (or the end, with
        `raise_on_pause=False`). In a notebook a progress line updates above the output."""
        cursor = ResultCursor(self._db, self.id)
        line = ProgressLine(self.progress and in_notebook(), self.settings.progress_seconds)
        delay = POLL_SECONDS
        while True:
            ended = self._ended(False)
            found = False
            for ids in cursor.new_ids():
                found = True
                yield from records_of(self._db, ids)
            if line.enabled:
                line.show(progress_text(self.status()), last=ended)
            if ended:
                self._ended(raise_on_pause)  # BatchPaused, after every stored result
                return
            delay = POLL_SECONDS if found else min(delay * 2, POLL_MAX_SECONDS)
            time.sleep(delay)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """`async for result in batch`: the iteration, its looks on a thread."""
        results = self.stream()
        while (result := await asyncio.to_thread(next, results, None)) is not None:
            yield result

    def results(self) -> Iterator[dict[str, Any]]:
        """Every request of the batch with its answer so far, in the order given (queued ones too)."""
        return iter_records(self._db, self.id)

    def to_pandas(self) -> Any:
        """The results as a pandas DataFrame, one row per request, the CSV export's columns."""
        pandas = _optional("pandas", "to_pandas()")
        return pandas.DataFrame.from_records([flat(r) for r in self.results()], columns=list(CSV_COLUMNS))

    def to_arrow(self) -> Any:
        """The results as a pyarrow Table, one row per request, the CSV export's columns."""
        pyarrow = _optional("pyarrow", "to_arrow()")
        rows = [flat(r) for r in self.results()]
        return pyarrow.Table.from_pylist(rows) if rows else pyarrow.table({c: [] for c in CSV_COLUMNS})


def start_here(settings: Settings, db: Database, batch_id: str) -> Background:
    """Send the batch on a thread of this process (see pipeline/background.py)."""
    batches.retarget(db, batch_id, **batch_columns(pool_from_settings(settings)))
    return Background(settings, db, batch_id).start()


def _optional(module: str, needed_by: str) -> Any:
    """An optional library (untyped to us), or ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{needed_by} needs {module}, which is not installed: pip install {module}"
        ) from None


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """One result as a flat row with the CSV export's columns."""
    usage, error = record["usage"] or {}, record["error"] or {}
    response = record["response"] or {}
    request = record["request"] if isinstance(record["request"], dict) else {}
    return {
        "custom_id": record["custom_id"],
        "endpoint": record["endpoint"],
        "model": request.get("model"),
        "status": record["status"],
        "http_status": response.get("status_code"),
        "finish_reason": "|".join(record["finish_reasons"]) or None,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "output": record["output"],
        "error_type": error.get("type"),
        "error_message": error.get("message"),
        "attempts": record["attempts"],
        "latency_ms": record["latency_ms"],
    }
