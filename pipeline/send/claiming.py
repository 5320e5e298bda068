"""The engine's claims, retried: a failing database is tried again until the engine drains, and a claim
refused because the engine was declared dead registers it anew first (send/ownership.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pipeline.retrying import Policy, call_async, transient
from pipeline.send.health import CLAIMING, WriteHealth
from pipeline.send.ownership import Ownership
from pipeline.store.claims import Claimed, WorkerGone

log = logging.getLogger(__name__)

#: Longest pause between two tries of a claim that failed (database busy, restarting, disk full).
MAX_CLAIM_RETRY_SECONDS = 10.0


async def retrying(
    take: Callable[[], list[Claimed]],
    what: str,
    own: Ownership,
    sleep: Callable[[float], Awaitable[None]],
    draining: Callable[[], bool],
    health: WriteHealth,
) -> list[Claimed]:
    """Run the claim `take` (blocking: in a thread) until it succeeds; `what` names it in the log, where
    each failure is one line (`health`, which also tells when they have lasted long enough to stall the
    engine).

    Errors another try cannot cure, and any error once the engine drains, are raised.
    """

    async def claim() -> list[Claimed]:
        try:
            return await asyncio.to_thread(take)
        except WorkerGone:  # buried: one beat finds out, the next registers anew, and the claim goes again
            await own.beat(force=True)
            if not await own.beat(force=True):
                raise
            return await asyncio.to_thread(take)

    def failed(attempt: int, exc: BaseException | None, seconds: float) -> None:
        if isinstance(exc, WorkerGone):
            log.warning("claiming %s: this engine was declared dead; registering in %.1fs", what, seconds)
        elif exc is not None:
            health.failed(CLAIMING, exc, seconds)

    policy = Policy(
        f"claiming {what}", retry_on=_curable, cap=MAX_CLAIM_RETRY_SECONDS, give_up=draining, on_retry=failed
    )
    rows = await call_async(claim, policy, sleep=sleep)
    health.worked(CLAIMING)
    return rows


def _curable(exc: BaseException) -> bool:
    return isinstance(exc, WorkerGone) or transient(exc)
