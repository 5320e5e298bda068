"""Batch API parts: the way a batch is sent (`batches.via`), rows of such a batch sent directly
(`requests.via`), attempts the Batch API answered (`attempts.via`, for its half price), and `parts`

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("via", sa.String(16), nullable=False, server_default="direct"))
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("via", sa.String(16), nullable=True))
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.add_column(sa.Column("via", sa.String(16), nullable=True))
    op.create_table(
        "parts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("batch_id", sa.String(32), sa.ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fence", sa.Integer(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("input_file_id", sa.String(128), nullable=True),
        sa.Column("remote_batch_id", sa.String(128), nullable=True),
        sa.Column("remote_status", sa.String(32), nullable=True),
        sa.Column("request_total", sa.Integer(), nullable=True),
        sa.Column("request_completed", sa.Integer(), nullable=True),
        sa.Column("request_failed", sa.Integer(), nullable=True),
        sa.Column("output_file_id", sa.String(128), nullable=True),
        sa.Column("error_file_id", sa.String(128), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("next_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_parts_batch_id", "parts", ["batch_id"])


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
