"""Fair share: each batch's priority and virtual time, the queue its messages go to, and per-batch send rates

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("vtime", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("queue", sa.String(64), nullable=True))
    # Batches submitted before went to the default queue (retry and resume always used it).
    op.execute("UPDATE batches SET queue = 'pipeline' WHERE dispatch = 'broker'")
    op.create_table(
        "batch_rates",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("batch_id", sa.String(32), primary_key=True),
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("sent_rpm", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
