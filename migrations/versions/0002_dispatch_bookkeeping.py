"""Dispatch bookkeeping: batches.dispatch (local or broker) and requests.enqueued_at (last message naming
the row), so workers can re-send the messages of rows whose message was lost

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("dispatch", sa.String(16), nullable=False, server_default="local"))
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
