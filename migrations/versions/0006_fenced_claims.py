"""Fenced claims: workers with heartbeats, a fence per row instead of a wall-clock lease, a unique content
key for atomic intake, and finish reasons as text (n=60 choices did not fit 256 characters)

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("beat", sa.Integer(), nullable=False),
        sa.Column("lease_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
    )
    # Rows a dead worker left running under the old wall-clock lease go back to the queue: nobody holds them
    # under the new scheme, and their batches re-claim them.
    op.execute("UPDATE requests SET status = 'queued', worker = NULL WHERE status = 'running'")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_index("ix_requests_status_lease")
        batch_op.drop_column("lease_until")
        batch_op.add_column(sa.Column("fence", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_requests_status_worker", ["status", "worker"])
    with op.batch_alter_table("results") as batch_op:
        batch_op.alter_column("finish_reasons", type_=sa.Text(), existing_type=sa.String(256))
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("content_key", sa.String(64), nullable=True))
    # The first batch of each content keeps the key; later --force copies have none.
    op.execute(
        "UPDATE batches SET content_key = content_hash WHERE content_hash <> '' AND id IN ("
        " SELECT b.id FROM batches b WHERE NOT EXISTS ("
        "  SELECT 1 FROM batches o WHERE o.content_hash = b.content_hash"
        "  AND (o.created_at < b.created_at OR (o.created_at = b.created_at AND o.id < b.id))))"
    )
    with op.batch_alter_table("batches") as batch_op:
        batch_op.create_unique_constraint("uq_batches_content_key", ["content_key"])


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
