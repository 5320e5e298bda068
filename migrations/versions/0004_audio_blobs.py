"""Audio blobs: uploaded files stored content-addressed, and the request that names one

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("requests") as batch_op:
        # The reference inline (`ADD COLUMN ... REFERENCES blobs`): SQLite then adds the column in place
        # instead of copying the whole requests table, which a separate ADD CONSTRAINT would force.
        batch_op.add_column(
            sa.Column("blob_sha256", sa.String(length=64), sa.ForeignKey("blobs.sha256"), nullable=True),
            inline_references=True,
        )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
