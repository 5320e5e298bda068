"""Spend budgets: the spend cap of a batch, shared by every engine sending it.

Before an attempt the engine reserves its worst-case cost (`reserve`); after the answer it settles what
the API charged (`settle`). A reservation is refused when the batch's spend so far plus every reservation
in force plus this one would exceed the cap: the batch then pauses, so it overshoots by at most what was in
flight (answers costing more than their reservation, e.g. without max_tokens).

`make_budget` picks the implementation like `make_limiter`: `RedisBudget` (redis.py) shares one budget per
batch through Redis, atomic in Lua; `LocalBudget` (local.py) keeps it in this process and learns from the
database, every second, what the other engines spent and hold (store/usage.py, the workers' `flights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the spend so far and the reservations in force, in USD."""

    spent: float
    reserved: float
    cap: float

    def reason(self) -> str:
        return (
            f"spend cap: ${self.spent:.4f} spent + ${self.reserved:.4f} reserved for requests in flight "
            f"would exceed the cap of ${self.cap:.4f}"
        )


class Budget(Protocol):
    async def reserve(self, batch_id: str, cap: float, usd: float) -> Refusal | None:
        """Reserve `usd` of the batch's cap; None when reserved, else why not (nothing reserved)."""

    def settle(self, batch_id: str, reserved: float, spent: float) -> None:
        """An attempt is over: release its reservation and count what it cost."""

    def observe(self, batch_id: str, recorded: float, others_reserved: float) -> None:
        """What the database says: spend stored for the batch, and other engines' reservations."""


def make_budget(redis_url: str | None) -> Budget:
    """A budget shared through Redis when `redis_url` is given, else one kept in this process."""
    if redis_url:
        from pipeline.spend.redis import RedisBudget

        return RedisBudget(redis_url)
    from pipeline.spend.local import LocalBudget

    return LocalBudget()
