"""Rate limits: every attempt acquires before sending and settles after the answer.

`Limiter` is what the engine calls; the caller picks the implementation with `make_limiter`:
`LocalLimiter` (local.py) paces one process, `RedisLimiter` (redis.py) every process sharing a Redis.
Both follow the rules in rules.py, so they are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pipeline.ratelimit.rules import LimitKey, Limits, LimitTable
from pipeline.settings import Settings


class Limiter(Protocol):
    async def acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> None:
        """Wait until one request costing `tokens` may be sent, and reserve it.

        With a `batch`, the request also waits for its batch's turn: the batches asking for one key share its
        budget in proportion to their `weight` (fair.py).
        """

    async def try_acquire(
        self, key: LimitKey, tokens: int, batch: str | None = None, weight: float = 1.0
    ) -> float:
        """Reserve one request costing `tokens` now and return 0, or return the seconds until it may be
        asked again (reserving nothing): the non-blocking `acquire` a pool of accounts polls (pool.py)."""

    def give(self, key: LimitKey, limits: Limits) -> None:
        """Given limits for this one key (an account's rpm/tpm), over the table's for its model."""

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        """After an answer: refund or charge the difference, and learn from the x-ratelimit-* headers."""

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        """A 429 said wait: hold every sender of this key for `seconds`."""


def limit_table(settings: Settings) -> LimitTable:
    """The given limits: the limits file, with --rpm/--tpm over its "*" entry."""
    table = LimitTable.from_file(settings.limits_file) if settings.limits_file else LimitTable()
    return table.with_default(Limits(settings.rpm, settings.tpm))


def shared_redis_url(settings: Settings) -> str | None:
    """Where limiter state is shared: PIPELINE_REDIS_URL, else a Redis broker; None keeps it in-process."""
    if settings.redis_url:
        return settings.redis_url
    broker = settings.broker_url or ""
    return broker if broker.startswith(("redis://", "rediss://")) else None


def make_limiter(settings: Settings, redis_url: str | None) -> Limiter:
    """A Redis-backed limiter shared by every process when `redis_url` is given, else an in-process one."""
    table = limit_table(settings)
    if redis_url:
        from pipeline.ratelimit.redis import RedisLimiter

        return RedisLimiter(redis_url, table)
    from pipeline.ratelimit.local import LocalLimiter

    return LocalLimiter(table)
