"""Whether the database takes the engine's writes: which kinds fail, since when, and when to stop sending.

A full disk, a tablespace out of space, a database down: the writer's transactions and the claims fail
again and again. Sending goes on only while answers can be stored, so the engine waits (`wait_writable`)
whenever the writer's last transaction failed: what is on the wire finishes, nothing new goes out, and
nothing is paid for only to be lost. A kind of write that keeps failing for `stall_seconds` makes the
engine stalled: `on_stall` is called once with a one-line reason (the engine pauses its batches if it
still can, and `pipeline run` stops), and a success of every failing kind ends the stall.

Each failure is one log line (what failed, for how long, the database's first line), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from pipeline.store import batches
from pipeline.store.db import Database, first_line

log = logging.getLogger(__name__)

#: The writer's transactions: while they fail, nothing new is sent.
STORING = "storing answers"
#: Claims of queued rows.
CLAIMING = "claiming requests"


class WriteHealth:
    """The engine's view of its writes. `failed` and `worked` are called on its event loop."""

    def __init__(self, stall_seconds: float, on_stall: Callable[[str], None] | None = None) -> None:
        self.stall_seconds = stall_seconds
        self._on_stall = on_stall
        #: kind -> (monotonic time of its first failure in a row, the database's message)
        self._failing: dict[str, tuple[float, str]] = {}
        self._storing = asyncio.Event()
        self._storing.set()
        #: why the engine stopped sending, while it is stalled
        self.stalled: str | None = None

    @property
    def writable(self) -> bool:
        """The writer's last transaction worked (or it has not tried yet)."""
        return self._storing.is_set()

    def failed(self, kind: str, exc: BaseException, retry_in: float | None = None) -> None:
        """One failed write of `kind`: logged in one line; a stall when it has failed long enough."""
        now = time.monotonic()
        since, _ = self._failing.setdefault(kind, (now, first_line(exc)))
        self._failing[kind] = (since, first_line(exc))
        if kind == STORING:
            self._storing.clear()
        again = f"; retrying in {retry_in:.1f}s" if retry_in is not None else ""
        log.warning("%s failed for %.0fs: %s%s", kind, now - since, first_line(exc), again)
        if self.stalled is None and now - since >= self.stall_seconds:
            self.stalled = (
                f"the database has refused writes for {now - since:.0f}s ({kind}: {first_line(exc)})"
            )
            if self._on_stall is not None:
                self._on_stall(self.stalled)

    def worked(self, kind: str) -> None:
        """A write of `kind` succeeded."""
        failing = self._failing.pop(kind, None)
        if failing is None:
            return
        log.warning("%s works again after %.0fs", kind, time.monotonic() - failing[0])
        if kind == STORING:
            self._storing.set()
        if not self._failing and self.stalled is not None:
            log.warning("the database takes writes again: sending and claiming resume")
            self.stalled = None

    async def wait_writable(self, stop: asyncio.Event) -> None:
        """Return once the writer's transactions work again, or `stop` is set."""
        if self._storing.is_set() or stop.is_set():
            return
        waits = [asyncio.ensure_future(self._storing.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waits, return_exceptions=True)


async def pause_batches(db: Database, batch_ids: set[str], reason: str) -> None:
    """Pause each batch with `reason`. One that cannot be written (the database refusing writes) is one
    line in the log: the caller stops sending it all the same."""
    for batch_id in sorted(batch_ids):
        try:
            await asyncio.to_thread(batches.pause_batch, db, batch_id, reason)
        except Exception as exc:
            log.error(
                "could not pause batch %s either (%s): sending it stays stopped here",
                batch_id,
                first_line(exc),
            )
