"""What the web view may do to a batch when started with `--allow-actions`: the library calls the `cancel`,
`retry`, `resume` and `priority` commands make.

The web view never sends requests itself. Retry and resume put rows back in the queue; a batch the
workers run (`submit`) is handed to them again through the broker, as the commands do; a batch made by
`pipeline run` waits for `pipeline resume BATCH` to send them from a terminal (the answer says so).
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.store import batches, fair
from pipeline.store.db import Database
from pipeline.store.models import CANCELLED_STATES, Batch, Dispatch, RequestStatus, Via

#: The actions, as the page and `/api/batches/{id}/{action}` name them.
ACTIONS = ("cancel", "retry", "resume", "priority")


def act(settings: Settings, db: Database, batch: Batch, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Do `action` to the batch; returns what happened, for the page to show. ConfigError when the action
    cannot apply (an unknown action, a bad priority, resuming a cancelled batch)."""
    if action == "cancel":
        queued = batches.cancel_batch(db, batch.id)
        return {
            "message": f"cancelled: {queued:,} queued requests will never be sent; those in flight finish"
        }
    if action == "priority":
        try:
            priority = int(body.get("priority", ""))
        except (TypeError, ValueError):
            raise ConfigError("priority must be a whole number") from None
        if not 1 <= priority <= fair.MAX_PRIORITY:
            raise ConfigError(f"priority must be between 1 and {fair.MAX_PRIORITY}")
        fair.set_priority(db, batch.id, priority)
        return {"message": f"priority {batch.priority} -> {priority}"}
    if action == "retry":
        count = batches.requeue_final(db, batch.id, [RequestStatus.FAILED])
        return {"message": f"{count:,} failed requests queued again; " + _send(settings, db, batch)}
    if action == "resume":
        if batch.state in CANCELLED_STATES:
            raise ConfigError(f"batch {batch.id} was cancelled: retry its cancelled requests from a terminal")
        batches.requeue_final(db, batch.id, [])
        return {"message": "resumed; " + _send(settings, db, batch)}
    raise ConfigError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")


def _send(settings: Settings, db: Database, batch: Batch) -> str:
    if batch.dispatch != Dispatch.BROKER:
        return f"send them with `pipeline resume {batch.id}`"
    from pipeline import dispatch  # Celery: loaded only when the workers are asked

    app = dispatch.connect_broker(settings)
    if batch.via == Via.BATCH_API:
        dispatch.plan_parts(db, batch.id)
    sent = dispatch.enqueue(app, settings, db, batch.id)
    return f"{sent} messages enqueued for the workers"
