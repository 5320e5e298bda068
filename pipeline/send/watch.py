"""What the engine learns from others while it runs, and what it tells them.

Every second: the state and spend cap of each batch it holds rows of (paused, cancelled or re-capped
elsewhere), for capped batches what the database says was spent and what the other engines hold reserved
(fed to the spend budget), and this engine's own flights (requests on the wire and USD reserved, per batch)
saved on its worker row for `pipeline status` and the other engines; and each batch's priority (changed by
`pipeline priority`: its weight in the fair share of slots and keys), and the accounts of each pool benched
for it (by this engine or another: store/account_states.py). Every few seconds the limiter's view
of each key it used (limits in force, send rate, each batch's send rate) is saved too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pipeline.ratelimit import Limiter
from pipeline.ratelimit.rules import LimitKey
from pipeline.send.accounting import Accounting
from pipeline.store import account_states, batch_rates, batches, claims, fair, limit_states, usage
from pipeline.store.batches import Control
from pipeline.store.db import Database, first_line
from pipeline.store.models import BatchState

if TYPE_CHECKING:
    from pipeline.send.routing import Routes

log = logging.getLogger(__name__)

#: Seconds between checks of the batches' state (paused or cancelled elsewhere).
STATE_POLL_SECONDS = 1.0
#: State polls between two saves of the limiter's view.
LIMITS_SAVE_POLLS = 5


class Watch:
    """The batch states and caps the engine acts on, kept fresh by `run` (a background task)."""

    def __init__(
        self,
        db: Database,
        limiter: Limiter,
        accounting: Accounting,
        batch_ids: Callable[[], Iterable[str]],
        worker: Callable[[], str],
    ) -> None:
        self.db = db
        self.limiter = limiter
        self.accounting = accounting
        self._batch_ids = batch_ids
        self._worker = worker
        self.states: dict[str, BatchState] = {}
        self.caps: dict[str, float | None] = {}
        #: each batch's weight in the fair share of slots and keys
        self.priorities: dict[str, int] = {}
        #: names this process's figures among the engines' (an in-process limiter sees only its own sends)
        self.source = f"{socket.gethostname()}:{os.getpid()}"
        #: every key the engine sent with, for the limiter snapshots
        self.keys: set[LimitKey] = set()
        #: the limiter's view of each key at the last save, for progress displays
        self.snapshots: dict[LimitKey, dict[str, Any]] = {}
        self._saved_flights: dict[str, list[float]] | None = None
        #: the engine's routes: benched accounts of pooled batches are read into them
        self.routes: Routes | None = None

    def state(self, batch_id: str) -> BatchState:
        return self.states.get(batch_id, BatchState.IN_PROGRESS)

    def cap(self, batch_id: str) -> float | None:
        return self.caps.get(batch_id)

    def priority(self, batch_id: str) -> int:
        return self.priorities.get(batch_id, 1)

    async def learn_priorities(self, batch_ids: set[str]) -> None:
        """Read the priorities of batches just claimed, unless known; a failing database leaves them at 1
        until the next poll."""
        new = batch_ids - self.priorities.keys()
        if new:
            with contextlib.suppress(Exception):
                self.priorities.update(await asyncio.to_thread(fair.priorities, self.db, new))

    async def learn(self, batch_ids: set[str]) -> None:
        """Read the state and cap of batches before sending their rows (a claim may follow a resume that
        changed the cap); a failing database keeps what is known, checked again every second."""
        try:
            await asyncio.to_thread(self._refresh, batch_ids)
        except Exception as exc:
            if batch_ids - self.caps.keys():  # never send a batch whose cap is unknown
                raise
            log.warning("could not read batch states (%r); using the last known", exc)

    async def run(self) -> None:
        polls, saving_failed = 0, False
        while True:
            await asyncio.sleep(STATE_POLL_SECONDS)
            polls += 1
            if polls % LIMITS_SAVE_POLLS == 0:
                try:
                    await self.save_limits()
                    saving_failed = False
                except Exception as exc:  # a display aid: never worth stopping the engine, or a traceback
                    if not saving_failed:
                        log.warning(
                            "could not save limiter state (%s); trying every %ds",
                            first_line(exc),
                            LIMITS_SAVE_POLLS,
                        )
                    saving_failed = True
            ids = set(self._batch_ids()) | set(self.accounting.flights_view())
            with contextlib.suppress(Exception):  # the database is busy or restarting: next period
                await asyncio.to_thread(self._refresh, ids)
                await self._save_flights()

    def _refresh(self, ids: set[str]) -> None:
        if not ids:
            return
        controls: dict[str, Control] = batches.batch_controls(self.db, ids)
        for batch_id, control in controls.items():
            self.states[batch_id] = control.state
            self.caps[batch_id] = control.max_cost_usd
        self.priorities.update(fair.priorities(self.db, ids))
        self._refresh_accounts(ids)
        capped = [b for b, c in controls.items() if c.max_cost_usd is not None]
        if not capped:
            return
        spent = usage.usage_of(self.db, capped)
        others = batches.flights_of_others(self.db, capped, self._worker())
        prices = self.accounting.prices
        for batch_id in capped:
            recorded = sum(
                prices.cost(
                    u.model, u.tier, u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.audio_seconds
                )
                or 0.0
                for u in spent[batch_id].models
            )
            self.accounting.budget.observe(batch_id, recorded, others.get(batch_id, 0.0))

    def _refresh_accounts(self, ids: set[str]) -> None:
        pooled = {b: r for b, r in self.routes.pooled().items() if b in ids} if self.routes else {}
        if pooled:
            benched = account_states.benched(self.db, pooled)
            for batch_id, route in pooled.items():
                route.apply(benched.get(batch_id, {}))

    async def _save_flights(self) -> None:
        flights = self.accounting.flights_view()
        if flights or self._saved_flights:  # nothing to say twice: an idle engine writes nothing
            await asyncio.to_thread(claims.save_flights, self.db, self._worker(), flights)
        self._saved_flights = flights

    async def save_limits(self) -> None:
        """Save what the limiter says of every key this engine used, for `pipeline status`."""
        snapshot = getattr(self.limiter, "snapshot", None)
        if snapshot is None or not self.keys:
            return
        snapshots = []
        for key in list(self.keys):
            snap = snapshot(key)
            snapshots.append((key, await snap if inspect.isawaitable(snap) else snap))
        self.snapshots = dict(snapshots)
        await asyncio.to_thread(limit_states.save_limit_states, self.db, snapshots)
        await asyncio.to_thread(batch_rates.save_batch_rates, self.db, self.source, snapshots)
