"""The engine's claims, retried: a failing database is tried again until the engine drains, and a claim
refused because the engine was declared dead registers it anew first (send/ownership.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline.send.health import CLAIMING, WriteHealth
from pipeline.send.ownership import Ownership
from pipeline.store.claims import Claimed, WorkerGone
from pipeline.store.db import is_transient

#: Longest pause between two tries of a claim that failed (database busy, restarting, disk full).
MAX_CLAIM_RETRY_SECONDS = 10.0


async def retrying(
    take: Callable[[], list[Claimed]],
    own: Ownership,
    sleep: Callable[[float], Awaitable[None]],
    draining: Callable[[], bool],
    health: WriteHealth,
) -> list[Claimed]:
    """Run the claim `take` (blocking: in a thread) until it succeeds; each failure is one line in the log
    (`health`, which also tells when they have lasted long enough to stall the engine).

    Errors another try cannot cure, and any error once the engine drains, are raised.
    """
    delay = 0.5
    while True:
        try:
            rows = await asyncio.to_thread(take)
        except WorkerGone:  # buried: one beat finds out, the next registers anew
            await own.beat(force=True)
            if not await own.beat(force=True):
                await sleep(delay)
            continue
        except Exception as exc:
            if not is_transient(exc) or draining():
                raise
            health.failed(CLAIMING, exc, delay)
            await sleep(delay)
            delay = min(delay * 2, MAX_CLAIM_RETRY_SECONDS)
            continue
        health.worked(CLAIMING)
        return rows
