"""limit_states: the rate limits in force per key and the recent send rate, for `pipeline status`

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "limit_states",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("key_fingerprint", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("rpm_source", sa.String(16), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("tpm_source", sa.String(16), nullable=True),
        sa.Column("sent_rpm", sa.Float(), nullable=True),
        sa.Column("sent_tpm", sa.Float(), nullable=True),
        sa.Column("cooldown_until", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
