"""Every bulk endpoint: reasoning tokens where usage is kept; a moderation's verdict and embedding vectors
(float32, stored once) in results

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.add_column(sa.Column("reasoning_tokens", sa.Integer(), nullable=True))
    with op.batch_alter_table("batch_usage") as batch_op:
        batch_op.add_column(
            sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(sa.Column("reasoning_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("dimensions", sa.Integer(), nullable=True))
        # last: SQLite reads a row's columns in order, so the others are read without reading through it
        batch_op.add_column(sa.Column("vectors", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
