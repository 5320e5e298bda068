"""A batch sent in this process on a thread of its own: the Python API's `submit` without workers.

The engine gets its own thread and its own event loop (uvloop when installed), never the caller's: a
notebook's kernel runs a loop of its own, and a blocking call in a cell (`batch.wait()`) would starve an
engine sharing it. No signal handlers are installed (only the main thread may). The thread is a daemon: a
process that ends before the batch does leaves its rows to the next run or `resume`, which takes them over
at once on this host (the engine's process is gone), as after a kill; nothing is lost.
"""

from __future__ import annotations

import logging
import threading

from pipeline import dispatch
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import Database
from pipeline.store.models import Via

log = logging.getLogger(__name__)


class Background:
    """Sends one batch's queued rows here until none is left, or the batch pauses or is cancelled."""

    def __init__(self, settings: Settings, db: Database, batch_id: str) -> None:
        self.settings = settings
        self.db = db
        self.batch_id = batch_id
        #: what stopped the run, if it failed (re-raised by `check`)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{batch_id[:12]}", daemon=True)

    def start(self) -> Background:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run to end (at most `timeout` seconds); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def check(self) -> None:
        """Raise what made the run fail, if it did."""
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            if batches.get_batch(self.db, self.batch_id).via == Via.BATCH_API:
                dispatch.run_batch_api_here(self.settings, self.db, self.batch_id, signals=False)
            else:
                dispatch.run_here(self.settings, self.db, self.batch_id, signals=False)
        except BaseException as exc:  # handed to the caller's thread by `check`
            log.debug("the run of batch %s failed", self.batch_id, exc_info=True)
            self.error = exc
