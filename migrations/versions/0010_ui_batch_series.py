"""The web view's counters: each batch's attempts per second (outcomes, tokens) and its tallies (latency
buckets, finish reasons), so its charts never scan the attempts; counted from the rows for batches before

Revision ID: 0010
Revises: 0009
"""

from bisect import bisect_right
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: store/series.py's latency bounds when this revision was written.
_BOUNDS = tuple(round(10 * (120_000 ** (k / 60)), 1) for k in range(61))


def upgrade() -> None:
    fk = sa.ForeignKey("batches.id", ondelete="CASCADE")
    op.create_table(
        "batch_series",
        sa.Column("batch_id", sa.String(32), fk, primary_key=True),
        sa.Column("second", sa.DateTime(), primary_key=True),
        *(sa.Column(c, sa.Integer(), nullable=False) for c in ("ok", "rate_limited", "errors")),
        *(
            sa.Column(c, sa.BigInteger(), nullable=False)
            for c in ("prompt_tokens", "completion_tokens", "total_tokens")
        ),
    )
    op.create_table(
        "batch_tallies",
        sa.Column(
            "batch_id", sa.String(32), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    _count_existing()


def _count_existing() -> None:
    """The counters of batches written before, from their attempts (streamed) and answers."""
    conn = op.get_bind()
    series: dict[tuple[str, object], list[int]] = {}
    latency: dict[tuple[str, int], int] = {}
    rows = conn.execute(
        sa.text(
            "SELECT r.batch_id, a.started_at, a.latency_ms, a.http_status, a.prompt_tokens,"
            " a.completion_tokens, a.total_tokens FROM attempts a JOIN requests r ON r.id = a.request_id"
        ).execution_options(yield_per=10_000)
    )
    for batch_id, started_at, latency_ms, status, *tokens in rows:
        # SQLite gives the stored text (to the second: its first 19 characters), PostgreSQL a datetime.
        second = started_at[:19] if isinstance(started_at, str) else started_at.replace(microsecond=0)
        row = series.setdefault((batch_id, second), [0] * 6)
        row[0 if status is not None and 200 <= status < 300 else 1 if status == 429 else 2] += 1
        for k, value in enumerate(tokens):
            row[3 + k] += value or 0
        key = (batch_id, bisect_right(_BOUNDS, latency_ms))
        latency[key] = latency.get(key, 0) + 1
    names = ("ok", "rate_limited", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
    table = sa.table("batch_series", sa.column("batch_id"), sa.column("second"), *map(sa.column, names))
    if series:
        conn.execute(
            table.insert(),
            [
                {"batch_id": b, "second": t, **dict(zip(names, row, strict=True))}
                for (b, t), row in series.items()
            ],
        )
    tallies = sa.table("batch_tallies", *map(sa.column, ("batch_id", "kind", "name", "count")))
    if latency:
        conn.execute(
            tallies.insert(),
            [{"batch_id": b, "kind": "latency", "name": str(k), "count": n} for (b, k), n in latency.items()],
        )
    op.execute(
        "INSERT INTO batch_tallies (batch_id, kind, name, count)"
        " SELECT r.batch_id, 'finish', coalesce(res.finish_reasons, ''), count(*)"
        " FROM requests r JOIN results res ON res.request_id = r.id WHERE r.status = 'succeeded'"
        " GROUP BY r.batch_id, coalesce(res.finish_reasons, '')"
    )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
