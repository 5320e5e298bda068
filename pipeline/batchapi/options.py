"""What a batch sent through the Batch API is given at intake, kept in its `options`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OnExpire(StrEnum):
    """What becomes of a request the Batch API did not get to within its 24 h window (`batch_expired`)."""

    RESUBMIT = "resubmit"  #: back to the queue, and into a new part
    DIRECT = "direct"  #: back to the queue, and sent directly (at the full price, at once)
    FAIL = "fail"  #: failed, with error type batch_expired


@dataclass(frozen=True)
class BatchApiOptions:
    """How a batch-api batch is cut into parts and what becomes of its expired and audio lines."""

    on_expire: OnExpire = OnExpire.RESUBMIT
    #: requests per part at most
    part_size: int = 50_000
    #: bytes of input file per part at most
    part_bytes: int = 200_000_000
    #: audio lines (which the Batch API does not take) are sent directly instead of refused
    audio_direct: bool = False

    def to_options(self) -> dict[str, Any]:
        """The JSON stored in the batch's `options`."""
        return {
            "on_expire": self.on_expire.value,
            "part_size": self.part_size,
            "part_bytes": self.part_bytes,
            "audio_direct": self.audio_direct,
        }

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> BatchApiOptions:
        """Read back from a batch's `options` (defaults for what is missing)."""
        default = cls()
        return cls(
            on_expire=OnExpire(options.get("on_expire", default.on_expire)),
            part_size=int(options.get("part_size", default.part_size)),
            part_bytes=int(options.get("part_bytes", default.part_bytes)),
            audio_direct=bool(options.get("audio_direct", default.audio_direct)),
        )
