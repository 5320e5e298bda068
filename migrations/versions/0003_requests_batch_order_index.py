"""Index requests (batch_id, id): exports and chunk publishing read a batch in id order without a sort

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.create_index("ix_requests_batch_id_id", ["batch_id", "id"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
