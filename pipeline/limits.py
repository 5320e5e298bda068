"""The rate-limiter seam: every attempt acquires before sending and settles after the answer.

`Limiter` is what the engine calls; `Unlimited` lets everything through (used when no limit is known).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LimitKey:
    """Whose budget a request spends: limits are per base URL, API key, organization and model."""

    base_url: str
    key_fingerprint: str
    organization: str | None
    model: str

    def __str__(self) -> str:
        return f"{self.base_url}|{self.key_fingerprint}|{self.organization or '-'}|{self.model}"


class Limiter(Protocol):
    async def acquire(self, key: LimitKey, tokens: int) -> None:
        """Wait until one request costing `tokens` may be sent, and reserve it."""

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        """After an answer: refund or charge the difference, and learn from the x-ratelimit-* headers."""

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        """A 429 said wait: hold every sender of this key for `seconds`."""


class Unlimited:
    """Lets every request through at once."""

    async def acquire(self, key: LimitKey, tokens: int) -> None:
        return None

    def settle(self, key: LimitKey, reserved: int, used: int | None, headers: Mapping[str, str]) -> None:
        return None

    def cooldown(self, key: LimitKey, seconds: float) -> None:
        return None
