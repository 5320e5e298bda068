"""The engine's right to send what it claimed: a registered worker row, kept alive by a heartbeat.

An engine sends a row only while it provably holds it: the last beat that reached the database began less
than VALID_SHARE of a lease ago, on this process's monotonic clock. Others bury an engine only after its
beat stood still for a whole lease on *their* clocks, counted from after that beat committed
(store/recovery.py), so the engine has stopped sending before anyone may take its rows back. When a beat
finds the worker row gone (the engine was paused, cut off, or its database was down for longer than a
lease), every row claimed under it is lost: those rows are never sent by it again, their answers are not
written (the fences moved), and the engine registers anew for the work that comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time

from pipeline.ids import new_worker_id
from pipeline.retrying import Policy, call_async, quiet
from pipeline.store import claims
from pipeline.store.claims import Claimed
from pipeline.store.db import Database

log = logging.getLogger(__name__)

#: Beats per lease.
BEATS_PER_LEASE = 4
#: Share of a lease, from the start of the last good beat, during which the engine may send. The rest is the
#: margin for a row checked just before the deadline to reach the wire.
VALID_SHARE = 0.75
#: Longest pause between two tries of a failing beat while a sender waits for it.
MAX_RETRY_SECONDS = 5.0


class Ownership:
    """Use as `async with Ownership(db, lease) as own:`; `await own.confirm(stop)` before every send."""

    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        #: the worker id claims are made under now (a new one after the engine was declared dead)
        self.worker = new_worker_id()
        self._valid_until = -math.inf
        self._registered = False
        self._failing = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ownership:
        await self._register()
        self._task = asyncio.create_task(self._keep())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            released = await asyncio.to_thread(claims.retire, self.db, self.worker)
        except Exception as exc:  # the others will bury it after a lease
            log.warning("could not retire engine %s (%r); others will recover its rows", self.worker, exc)
            return
        if released:
            log.warning("engine %s gave %d unfinished rows back to the queue", self.worker, released)

    @property
    def fresh(self) -> bool:
        """The last good beat is recent enough to send."""
        return time.monotonic() < self._valid_until

    def holds(self, row: Claimed) -> bool:
        """The row was claimed under the current worker id (not under one declared dead since)."""
        return row.worker == self.worker

    async def confirm(self, stop: asyncio.Event) -> bool:
        """Wait until the claims under the current id are proven (True), or `stop` is set (False).

        Beats at once when the last beat is too old; a failing database is retried, and nothing is sent
        meanwhile.
        """
        if self.fresh:
            return True

        async def proven() -> bool:
            if not self.fresh and not stop.is_set():
                await self.beat()
            return self.fresh

        async def pause(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

        # beat() logs its own failures, once per streak
        policy = Policy(
            "heartbeat",
            again=lambda fresh: not fresh,
            first=0.25,
            cap=MAX_RETRY_SECONDS,
            give_up=stop.is_set,
            on_retry=quiet,
        )
        fresh: bool = await call_async(proven, policy, sleep=pause)
        return fresh

    async def beat(self, force: bool = False) -> bool:
        """One beat, shared by everyone waiting for it. True when it proved the engine alive."""
        async with self._lock:
            if self.fresh and not force:
                return True
            started = time.monotonic()
            try:
                alive = await self._register() if not self._registered else await self._beat()
            except Exception as exc:
                if not self._failing:
                    log.warning(
                        "heartbeat of %s failed (%r): sending stops until one succeeds", self.worker, exc
                    )
                self._failing = True
                return False
            if self._failing:
                log.warning("heartbeat of %s works again", self.worker)
                self._failing = False
            if alive:
                self._valid_until = started + self.lease_seconds * VALID_SHARE
            return alive

    async def _beat(self) -> bool:
        if await asyncio.to_thread(claims.beat, self.db, self.worker):
            return True
        log.warning(
            "engine %s was declared dead (no heartbeat for a lease): the rows it held are dropped",
            self.worker,
        )
        self.worker, self._registered = new_worker_id(), False
        self._valid_until = -math.inf
        return False

    async def _register(self) -> bool:
        started = time.monotonic()
        await asyncio.to_thread(
            claims.register, self.db, self.worker, socket.gethostname(), os.getpid(), self.lease_seconds
        )
        self._registered = True
        self._valid_until = started + self.lease_seconds * VALID_SHARE
        return True

    async def _keep(self) -> None:
        period = self.lease_seconds / BEATS_PER_LEASE
        while True:
            await asyncio.sleep(period)
            await self.beat(force=True)
