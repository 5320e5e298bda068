"""Accounting around every attempt: its cost, the spend cap, what is on the wire per batch, stats, metrics.

The engine calls `reserve` before an attempt waits for rate-limit budget (it raises SpendCapReached when
the batch's cap cannot cover the attempt's worst case), `on_wire` around the HTTP exchange, and `settle`
after the answer, on every path. Nothing here touches the database: the watch (watch.py) saves `flights`
and feeds the budget what the database says every second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import ErrorType, SpendCapReached
from pipeline.prices import PriceTable
from pipeline.send.estimates import Job
from pipeline.send.responses import Usage
from pipeline.spend import Budget
from pipeline.store.claims import Outcome
from pipeline.store.models import RequestStatus
from pipeline.store.usage import DIRECT

if TYPE_CHECKING:  # prometheus_client is loaded only when metrics are served
    from pipeline.send.metrics import Metrics


@dataclass
class EngineStats:
    """Counters for progress displays; only the engine's own event loop writes them."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    #: rows given up because another engine took them back (this one was declared dead)
    lost: int = 0
    attempts: int = 0
    rate_limited: int = 0
    total_tokens: int = 0
    #: USD the API charged for this engine's attempts (models without a price count 0)
    cost_usd: float = 0.0
    #: models answered here that have no price
    unpriced: set[str] = field(default_factory=set)
    #: the signal that stopped `pipeline run` before every row was final (SIGINT, SIGTERM), if one did
    stopped_by: int | None = None
    #: why sending stopped when the database refused writes for too long (send/health.py), if it did
    stalled: str | None = None


@dataclass(slots=True)
class Ticket:
    """One attempt's reservation against its batch's spend cap (0 when the batch has none)."""

    batch_id: str
    usd: float
    capped: bool


class Accounting:
    """Prices attempts, keeps the spend caps, counts what is on the wire."""

    def __init__(self, prices: PriceTable, budget: Budget, metrics: Metrics | None = None) -> None:
        self.prices = prices
        self.budget = budget
        self.metrics = metrics
        self.stats = EngineStats()
        #: batch id -> [requests on the wire, USD reserved for this engine's attempts]
        self.flights: dict[str, list[float]] = {}

    async def reserve(self, job: Job, cap: float | None) -> Ticket:
        """Reserve the attempt's worst-case cost under the batch's cap; SpendCapReached when it cannot."""
        batch_id = job.row.batch_id
        if cap is None or job.endpoint.free:
            return Ticket(batch_id, 0.0, False)
        completion = job.estimate - job.prompt_tokens
        usd = self.prices.cost(job.model, DIRECT, job.prompt_tokens, 0, completion)
        if usd is None:
            raise SpendCapReached(
                f"spend cap: no price for model {job.model!r} (add it with --prices FILE)",
                error_type=ErrorType.SPEND_CAP,
            )
        refusal = await self.budget.reserve(batch_id, cap, usd)
        if refusal is not None:
            raise SpendCapReached(refusal.reason(), error_type=ErrorType.SPEND_CAP)
        self._flight(batch_id)[1] += usd
        return Ticket(batch_id, usd, True)

    def on_wire(self, batch_id: str) -> _OnWire:
        """Around the HTTP exchange (`with`): the request counts as in flight for its batch."""
        return _OnWire(self._flight(batch_id), self.metrics)

    def settle(self, ticket: Ticket, model: str, sent: bool, status: int | None, used: Usage) -> float:
        """The attempt is over (`sent`, or stopped before): its cost, counted everywhere; the reservation
        released."""
        prompt, cached = used.prompt_tokens or 0, used.cached_tokens or 0
        completion, seconds = used.completion_tokens or 0, used.audio_seconds or 0.0
        cost = self.prices.cost(model, DIRECT, prompt, cached, completion, seconds)
        charged = any(v is not None for v in (used.prompt_tokens, used.total_tokens, used.audio_seconds))
        if cost is None:
            if charged:
                self.stats.unpriced.add(model)
            cost = 0.0
        if ticket.capped:
            self.budget.settle(ticket.batch_id, ticket.usd, cost)
            flight = self._flight(ticket.batch_id)
            flight[1] = max(0.0, flight[1] - ticket.usd)
        if sent:
            self._count_attempt(model, status, used, cost)
        return cost

    def _count_attempt(self, model: str, status: int | None, used: Usage, cost: float) -> None:
        s = self.stats
        s.attempts += 1
        s.total_tokens += used.total_tokens or 0
        s.cost_usd += cost
        s.rate_limited += status == 429
        m = self.metrics
        if m is None:
            return
        m.attempts.labels(str(status) if status is not None else "none").inc()
        if status == 429:
            m.rate_limited.inc()
        m.tokens.labels("prompt").inc(used.prompt_tokens or 0)
        m.tokens.labels("cached").inc(used.cached_tokens or 0)
        m.tokens.labels("completion").inc(used.completion_tokens or 0)
        m.tokens.labels("reasoning").inc(used.reasoning_tokens or 0)
        m.audio_seconds.inc(used.audio_seconds or 0.0)
        if cost:
            m.cost.labels(model).inc(cost)

    def observe_latency(self, latency_ms: float, waited: float) -> None:
        if self.metrics is not None:
            self.metrics.latency.observe(latency_ms / 1000.0)
            self.metrics.limiter_wait.observe(waited)

    def count(self, outcome: Outcome) -> None:
        """A request is done with here: stored final, or released back to the queue."""
        name = {
            RequestStatus.SUCCEEDED: "succeeded",
            RequestStatus.FAILED: "failed",
            RequestStatus.CANCELLED: "cancelled",
        }.get(outcome.status, "released")
        setattr(self.stats, name, getattr(self.stats, name) + 1)
        if self.metrics is not None:
            self.metrics.requests.labels(name).inc()

    def flights_view(self) -> dict[str, list[float]]:
        """A copy of `flights` without the batches that have nothing on the wire or reserved."""
        return {b: [f[0], round(f[1], 9)] for b, f in self.flights.items() if f[0] or f[1] > 0}

    def _flight(self, batch_id: str) -> list[float]:
        flight = self.flights.get(batch_id)
        if flight is None:
            flight = self.flights[batch_id] = [0, 0.0]
        return flight


class _OnWire:
    """`Accounting.on_wire`'s context: a plain class, as every attempt enters one (a generator costs more)."""

    __slots__ = ("_flight", "_metrics")

    def __init__(self, flight: list[float], metrics: Metrics | None) -> None:
        self._flight, self._metrics = flight, metrics

    def __enter__(self) -> None:
        self._flight[0] += 1
        if self._metrics is not None:
            self._metrics.in_flight.inc()

    def __exit__(self, *exc_info: object) -> None:
        self._flight[0] -= 1
        if self._metrics is not None:
            self._metrics.in_flight.dec()
