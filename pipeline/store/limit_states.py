"""What each engine's limiter last saw of every key (limits in force, send rate), for `pipeline status`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.ratelimit.rules import LimitKey
from pipeline.store.db import Database
from pipeline.store.models import LimitState, utcnow
from pipeline.store.overview import limit_states as limit_states
from pipeline.store.sql import upsert


def save_limit_states(db: Database, snapshots: Sequence[tuple[LimitKey, dict[str, Any]]]) -> None:
    """Upsert what the limiter says of each key (limits in force, send rate) for `pipeline status`."""
    if not snapshots:
        return
    now = utcnow()
    rows = [
        {
            "key": str(key),
            "base_url": key.base_url,
            "key_fingerprint": key.key_fingerprint,
            "model": key.model,
            "rpm": snap.get("rpm"),
            "rpm_source": snap.get("rpm_source"),
            "tpm": snap.get("tpm"),
            "tpm_source": snap.get("tpm_source"),
            "sent_rpm": snap.get("sent_rpm"),
            "sent_tpm": snap.get("sent_tpm"),
            "cooldown_until": _from_unix(snap.get("cooldown_until")),
            "updated_at": now,
        }
        for key, snap in snapshots
    ]
    with db.write() as s:
        upsert(s, LimitState, "key", rows)


def _from_unix(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None) if value else None
