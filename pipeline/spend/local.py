"""LocalBudget: the spend cap kept in this process, from what the database says the others did.

Exact for one engine (`pipeline run`). Several engines without Redis see each other through the database,
refreshed every second (`observe`): the spend stored, and the reservations each engine saved with its
flights. So a batch they share may overshoot its cap by what was in flight plus up to a second of the
others' spend; share a Redis (`RedisBudget`) for one exact budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spend import Refusal


@dataclass(slots=True)
class _Account:
    recorded: float = 0.0  #: spend stored in the database at the last observation (every engine's)
    settled: float = 0.0  #: this engine's spend since that observation
    reserved: float = 0.0  #: this engine's reservations in force
    others: float = 0.0  #: the other engines' reservations at the last observation


class LocalBudget:
    """Reservations and spend per batch in this process."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def _account(self, batch_id: str) -> _Account:
        account = self._accounts.get(batch_id)
        if account is None:
            account = self._accounts[batch_id] = _Account()
        return account

    async def reserve(self, batch_id: str, cap: float, usd: float) -> Refusal | None:
        a = self._account(batch_id)
        spent, reserved = a.recorded + a.settled, a.reserved + a.others
        if spent + reserved + usd > cap:
            return Refusal(spent, reserved, cap)
        a.reserved += usd
        return None

    def settle(self, batch_id: str, reserved: float, spent: float) -> None:
        a = self._account(batch_id)
        a.reserved = max(0.0, a.reserved - reserved)
        a.settled += spent

    def observe(self, batch_id: str, recorded: float, others_reserved: float) -> None:
        # What this engine settled before the observation may be in `recorded` already or still in its
        # writer: counting it twice until the next observation errs on the side of the cap.
        a = self._account(batch_id)
        if recorded >= a.recorded:
            a.settled = max(0.0, a.settled - (recorded - a.recorded))
        a.recorded, a.others = recorded, others_reserved
