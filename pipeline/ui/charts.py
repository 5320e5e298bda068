"""What a batch's charts draw: attempts over time, the latency distribution, finish reasons, and
failures grouped by type with examples.

Read from the per-batch counters that every write of attempts keeps (`store/series.py`): attempts per
second they started, attempts per latency bucket, answers per finish reasons. A batch page reads a few
thousand rows whatever the batch's size; a pass over a million-request batch's attempts took 18 s on
SQLite. The seconds are folded into about TIME_BUCKETS buckets here. Latency percentiles are read from the
histogram's buckets (each ~21% wide, interpolated geometrically within): exact enough to see a p99.
Cost over time spreads the batch's cost (`status`'s figure) over the buckets by the tokens each holds,
priced at the batch's models' average rates.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from pipeline.prices import PriceTable
from pipeline.report import iso
from pipeline.store import usage
from pipeline.store.db import Database
from pipeline.store.models import Batch, BatchSeries, BatchState, BatchTally, Request, RequestStatus, utcnow
from pipeline.store.series import FINISH, LATENCY, LATENCY_BOUNDS

#: About this many time buckets per chart, whatever the batch's length.
TIME_BUCKETS = 120
#: Bucket widths (seconds) a chart may use: the smallest giving at most TIME_BUCKETS buckets.
WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
#: Examples shown per failure group.
EXAMPLES = 3


def bucket_width(seconds: float) -> int:
    """The bucket width (seconds) for a chart spanning `seconds`."""
    return next((w for w in WIDTHS if seconds / w <= TIME_BUCKETS), WIDTHS[-1])


def span(db: Database, batch: Batch) -> tuple[datetime, datetime]:
    """When the batch's first attempt started (its creation if none yet) and when it ended (or now)."""
    first = usage.usage_of(db, [batch.id])[batch.id].first_sent_at or batch.created_at
    final = BatchState(batch.state).final and batch.finished_at is not None
    end = batch.finished_at if final and batch.finished_at else utcnow()
    return first, max(end, first + timedelta(seconds=1))


def attempts_over_time(db: Database, batch: Batch, prices: PriceTable, cost_usd: float) -> dict[str, Any]:
    """Per time bucket: attempts (2xx, 429, errors), tokens and cost; and the latency histogram."""
    start, end = span(db, batch)
    width = bucket_width((end - start).total_seconds())
    with db.read() as s:
        seconds = s.execute(
            select(
                BatchSeries.second,
                BatchSeries.ok,
                BatchSeries.rate_limited,
                BatchSeries.errors,
                BatchSeries.prompt_tokens,
                BatchSeries.completion_tokens,
                BatchSeries.total_tokens,
            ).where(BatchSeries.batch_id == batch.id)
        ).all()
        latency = s.execute(
            select(BatchTally.name, BatchTally.count).where(
                BatchTally.batch_id == batch.id, BatchTally.kind == LATENCY
            )
        ).all()
    histogram = Counter({int(name): int(count) for name, count in latency})
    series = _fold(list(seconds), start, end, width, _unit_prices(db, batch, prices, cost_usd))
    return {**series, "latency": _latency(histogram)}


def _fold(
    rows: list[Any], start: datetime, end: datetime, width: int, units: tuple[float, float]
) -> dict[str, Any]:
    """Per-second rows as series: one point per bucket from start to end."""
    n = max(1, math.ceil((end - start).total_seconds() / width))
    ok, limited, errors, tokens, usd = ([0.0] * n for _ in range(5))
    for second, n_ok, n_limited, n_errors, prompt, completion, total in rows:
        k = min(max(int((second - start).total_seconds() // width), 0), n - 1)
        ok[k] += n_ok
        limited[k] += n_limited
        errors[k] += n_errors
        tokens[k] += float(total)
        usd[k] += float(prompt) * units[0] + float(completion) * units[1]
    cumulative, running = [], 0.0
    for value in usd:
        running += value
        cumulative.append(round(running, 6))
    return {
        "start": iso(start),
        "width_seconds": width,
        "times": [iso(start + timedelta(seconds=width * k)) for k in range(n)],
        "requests_per_second": [
            round((a + b + c) / width, 3) for a, b, c in zip(ok, limited, errors, strict=True)
        ],
        "ok_per_second": [round(a / width, 3) for a in ok],
        "rate_limited": [int(b) for b in limited],
        "errors": [int(c) for c in errors],
        "tokens_per_minute": [round(t * 60 / width, 1) for t in tokens],
        "cost_usd_cumulative": cumulative,
    }


def _latency(histogram: Counter[int]) -> dict[str, Any]:
    total = sum(histogram.values())
    buckets = [
        {"low_ms": _low(k), "high_ms": _high(k), "count": histogram[k]}
        for k in sorted(histogram)
        if histogram[k]
    ]
    return {
        "attempts": total,
        "buckets": buckets,
        **{f"p{q}_ms": _percentile(histogram, total, q / 100) for q in (50, 95, 99)},
    }


def _low(k: int) -> float:
    return 0.0 if k == 0 else LATENCY_BOUNDS[k - 1]


def _high(k: int) -> float | None:
    return LATENCY_BOUNDS[k] if k < len(LATENCY_BOUNDS) else None


def _percentile(histogram: Counter[int], total: int, q: float) -> float | None:
    """The q-quantile, interpolated geometrically inside the bucket it falls in."""
    if not total:
        return None
    target, seen = q * total, 0
    for k in sorted(histogram):
        count = histogram[k]
        if seen + count >= target and count:
            low, high = _low(k), _high(k)
            if high is None:
                return low
            fraction = (target - seen) / count
            low = max(low, 1.0)
            return float(round(low * (high / low) ** fraction, 1))
        seen += count
    return None


def _unit_prices(db: Database, batch: Batch, prices: PriceTable, cost_usd: float) -> tuple[float, float]:
    """USD per prompt token and per completion token, averaged over the batch's models so that the
    buckets add up to the batch's cost."""
    totals = usage.usage_of(db, [batch.id])[batch.id]
    prompt_usd = completion_usd = 0.0
    for u in totals.models:
        prompt_usd += prices.cost(u.model, u.tier, u.prompt_tokens, u.cached_tokens, 0) or 0.0
        completion_usd += prices.cost(u.model, u.tier, 0, 0, u.completion_tokens) or 0.0
    prompt, completion = totals.total("prompt_tokens"), totals.total("completion_tokens")
    unit = (prompt_usd / prompt if prompt else 0.0, completion_usd / completion if completion else 0.0)
    # Audio seconds have no bucket of their own: scale the token rates so the buckets sum to the cost.
    token_usd = prompt_usd + completion_usd
    scale = cost_usd / token_usd if token_usd > 0 else 0.0
    return unit[0] * scale, unit[1] * scale


def finish_reasons(db: Database, batch_id: str) -> dict[str, int]:
    """Succeeded answers by finish reasons (every choice's, joined with |), the most common first."""
    with db.read() as s:
        rows = s.execute(
            select(BatchTally.name, BatchTally.count).where(
                BatchTally.batch_id == batch_id, BatchTally.kind == FINISH, BatchTally.count > 0
            )
        ).all()
    counts = {name or "(none)": int(n) for name, n in rows}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def failure_examples(db: Database, batch_id: str, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`groups` (status's failures) each with up to EXAMPLES of its rows: id, custom id, message."""
    out = []
    with db.read() as s:
        for group in groups:
            error_type = None if group["error_type"] == "unknown" else group["error_type"]
            stmt = (
                select(Request.id, Request.custom_id, Request.error_message)
                .where(
                    Request.batch_id == batch_id,
                    Request.status == RequestStatus.FAILED,
                    Request.error_type.is_(None) if error_type is None else Request.error_type == error_type,
                )
                .order_by(Request.id)
                .limit(EXAMPLES)
            )
            examples = [{"id": i, "custom_id": c, "message": m} for i, c, m in s.execute(stmt)]
            out.append({**group, "examples": examples})
    return out
