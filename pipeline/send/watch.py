"""What the engine learns from others while it runs: batches paused or cancelled elsewhere, and priorities
changed by `pipeline priority`.

And what it tells them: every few seconds the limiter's view of each key it used (limits in force, send
rate, each batch's send rate) is saved for `pipeline status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterable

from pipeline.ratelimit import Limiter
from pipeline.ratelimit.rules import LimitKey
from pipeline.store import batch_rates, batches, fair, limit_states
from pipeline.store.db import Database
from pipeline.store.models import BatchState

log = logging.getLogger(__name__)

#: Seconds between checks of the batches' state (paused or cancelled elsewhere).
STATE_POLL_SECONDS = 1.0
#: State polls between two saves of the limiter's view.
LIMITS_SAVE_POLLS = 5


class Watch:
    """The batch states the engine acts on, kept fresh by `run` (a background task)."""

    def __init__(self, db: Database, limiter: Limiter, batch_ids: Callable[[], Iterable[str]]) -> None:
        self.db = db
        self.limiter = limiter
        self._batch_ids = batch_ids
        self.states: dict[str, BatchState] = {}
        #: each batch's weight in the fair share of slots and keys
        self.priorities: dict[str, int] = {}
        #: every key the engine sent with, for the limiter snapshots
        self.keys: set[LimitKey] = set()
        #: names this process's figures among the engines' (an in-process limiter sees only its own sends)
        self.source = f"{socket.gethostname()}:{os.getpid()}"

    def state(self, batch_id: str) -> BatchState:
        return self.states.get(batch_id, BatchState.ACTIVE)

    def priority(self, batch_id: str) -> int:
        return self.priorities.get(batch_id, 1)

    async def learn_priorities(self, batch_ids: set[str]) -> None:
        """Read the priorities of batches just claimed, unless known; a failing database leaves them at 1
        until the next poll."""
        new = batch_ids - self.priorities.keys()
        if new:
            with contextlib.suppress(Exception):
                self.priorities.update(await asyncio.to_thread(fair.priorities, self.db, new))

    async def run(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(STATE_POLL_SECONDS)
            polls += 1
            if polls % LIMITS_SAVE_POLLS == 0:
                try:
                    await self.save_limits()
                except Exception:  # a display aid: never worth stopping the engine
                    log.warning("could not save limiter state", exc_info=True)
            ids = set(self._batch_ids())
            if ids:
                with contextlib.suppress(Exception):  # the database is busy or restarting: next period
                    self.states.update(await asyncio.to_thread(batches.batch_states, self.db, ids))
                    self.priorities.update(await asyncio.to_thread(fair.priorities, self.db, ids))

    async def save_limits(self) -> None:
        """Save what the limiter says of every key this engine used, for `pipeline status`."""
        snapshot = getattr(self.limiter, "snapshot", None)
        if snapshot is None or not self.keys:
            return
        snapshots = []
        for key in list(self.keys):
            snap = snapshot(key)
            snapshots.append((key, await snap if inspect.isawaitable(snap) else snap))
        await asyncio.to_thread(limit_states.save_limit_states, self.db, snapshots)
        await asyncio.to_thread(batch_rates.save_batch_rates, self.db, self.source, snapshots)
