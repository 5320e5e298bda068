"""Pools of accounts: the pool a batch is sent through (no secret), and the accounts benched for a batch

Revision ID: 0012_accounts
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_accounts"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("accounts", sa.JSON(), nullable=True))
    op.create_table(
        "account_states",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("benched_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "account"),
    )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
