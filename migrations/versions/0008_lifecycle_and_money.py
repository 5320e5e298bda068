"""Lifecycle and money: batch states in_progress/cancelling/completed with finished_at, a spend cap,
per-batch usage and failure counters (status never scans attempts or failed rows), cached tokens and
audio seconds per attempt, request keys for --reuse, and what each engine has in flight

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: A batch has unfinished rows.
_OPEN = (
    "EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = batches.id AND r.status IN ('queued', 'running'))"
)
_LAST = "(SELECT max(r.finished_at) FROM requests r WHERE r.batch_id = batches.id)"


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("max_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("reused", sa.Integer(), nullable=False, server_default="0"))
    # `active` splits into in_progress (rows left) and completed (every row final); a cancelled batch with
    # rows still running is cancelling.
    op.execute(f"UPDATE batches SET state = 'in_progress' WHERE state = 'active' AND {_OPEN}")
    op.execute(
        f"UPDATE batches SET state = 'completed', finished_at = {_LAST}"
        f" WHERE state = 'active' AND NOT {_OPEN}"
    )
    op.execute(f"UPDATE batches SET state = 'cancelling' WHERE state = 'cancelled' AND {_OPEN}")
    op.execute(f"UPDATE batches SET finished_at = {_LAST} WHERE state = 'cancelled'")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("request_key", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.Integer(), nullable=True))
        batch_op.create_index("ix_requests_request_key", ["request_key"])
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.add_column(sa.Column("cached_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("audio_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("workers") as batch_op:
        batch_op.add_column(sa.Column("flights", sa.JSON(), nullable=True))
    op.create_table(
        "batch_usage",
        sa.Column(
            "batch_id", sa.String(32), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(16), primary_key=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("charged", sa.Integer(), nullable=False),
        sa.Column("rate_limited", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("audio_seconds", sa.Float(), nullable=False),
        sa.Column("first_sent_at", sa.DateTime(), nullable=True),
    )
    # The counters of existing batches, from their attempts. Attempts did not record their model: the
    # model the answer named stands in (priced the same: a dated snapshot of the same model), else unknown.
    # The tier is the way the attempt went (0007's attempts.via): the Batch API's is priced at half.
    op.execute(
        "INSERT INTO batch_usage (batch_id, model, tier, attempts, charged, rate_limited, prompt_tokens,"
        " cached_tokens, completion_tokens, total_tokens, audio_seconds, first_sent_at)"
        " SELECT r.batch_id, coalesce(res.model, 'unknown'), coalesce(a.via, 'direct'), count(*),"
        " sum(CASE WHEN a.prompt_tokens IS NOT NULL OR a.completion_tokens IS NOT NULL"
        "  OR a.total_tokens IS NOT NULL THEN 1 ELSE 0 END),"
        " sum(CASE WHEN a.http_status = 429 THEN 1 ELSE 0 END),"
        " coalesce(sum(a.prompt_tokens), 0), 0, coalesce(sum(a.completion_tokens), 0),"
        " coalesce(sum(a.total_tokens), 0),"
        " coalesce(sum(CASE WHEN a.http_status BETWEEN 200 AND 299 THEN res.audio_seconds END), 0),"
        " min(a.started_at)"
        " FROM attempts a JOIN requests r ON r.id = a.request_id"
        " LEFT JOIN results res ON res.request_id = r.id"
        " GROUP BY r.batch_id, coalesce(res.model, 'unknown'), coalesce(a.via, 'direct')"
    )

    op.create_table(
        "batch_failures",
        sa.Column(
            "batch_id", sa.String(32), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("error_type", sa.String(64), primary_key=True),
        sa.Column("http_status", sa.Integer(), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sample", sa.Text(), nullable=True),
    )
    op.execute(REBUILD_FAILURES)


#: The failure counters of batches, from their failed rows (as store/usage.py rebuilds them).
REBUILD_FAILURES = (
    "INSERT INTO batch_failures (batch_id, error_type, http_status, count, sample)"
    " SELECT r.batch_id, coalesce(r.error_type, 'unknown'), coalesce(res.http_status, 0), count(*),"
    " max(r.error_message) FROM requests r LEFT JOIN results res ON res.request_id = r.id"
    " WHERE r.status = 'failed' GROUP BY r.batch_id, coalesce(r.error_type, 'unknown'),"
    " coalesce(res.http_status, 0)"
)


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
