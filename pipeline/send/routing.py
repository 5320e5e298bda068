"""Which account an attempt goes through: the engine's view of each batch's pool.

- `Lane`: one account as this engine sends through it (shared by every batch using that account): its
  headers, built once; its circuit breaker; its adaptive concurrency `Gate` (adaptive.py); why it cannot be
  used here at all (`down`: its key variable is unset on this machine, or holds another key than the batch
  was submitted with).
- `Target`: one account for one (endpoint, model): its limit key, URL and the model name the body must carry
  there. Built once per (endpoint, model) and account, so an attempt allocates and looks up nothing.
- `Route`: one batch's pool: its lanes, which are benched for the batch (and why), its targets, and
  `acquire`, the pool-level acquire: the first account, in pool order, whose limiter grants now (its
  non-blocking `try_acquire`) and whose gate has room; else it sleeps until the soonest grant and asks again.
  As in the limiters, only the head of a batch's line polls (one lock per route: a route is one batch's), so
  hundreds of waiting senders cost one poll per wake-up. A single account without an adaptive gate takes
  the limiter's own `acquire`, as before pools existed.

The account choice sits inside the engine's slot (max in flight), after the batch-state check and in place of
`limiter.acquire`: slot -> check -> Route.acquire (account, limiter, gate) -> check, spend cap, ownership ->
HTTP through the chosen lane -> settle (limiter, gate, breaker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from pipeline.about import user_agent
from pipeline.accounts import Account, Pool, pool_from_settings
from pipeline.endpoints import Endpoint
from pipeline.errors import (
    AccessDenied,
    APIError,
    BatchBlocked,
    EndpointDown,
    ErrorType,
    NotFound,
    QuotaExhausted,
)
from pipeline.ratelimit import Limiter
from pipeline.ratelimit.rules import MIN_SLEEP, LimitKey, Limits
from pipeline.send.adaptive import Gate
from pipeline.send.bodies import ACCEPT_ENCODING
from pipeline.send.breaker import Breaker
from pipeline.settings import Settings
from pipeline.store import account_states
from pipeline.store.db import Database

log = logging.getLogger(__name__)

#: Seconds a bench this engine made holds against a database read that does not show it yet.
LOCAL_BENCH_SECONDS = 5.0
#: Headers whose presence in an answer means the server states its limits (the limiter paces it).
LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


class NoAccount(BatchBlocked):
    """Every account of the batch's pool is benched: the batch pauses."""


class Rerouted(Exception):
    """The attempt's account was benched and another account of the pool is left: send the row again
    (its attempt recorded; no attempt of its budget spent)."""


#: What an account answers when it, not the row, is the problem: in a pool the account is benched for the
#: batch and the row goes to another account.
ACCOUNT_ERRORS = (AccessDenied, QuotaExhausted, NotFound, EndpointDown)


def overloaded(status: int | None, error: APIError | None) -> bool:
    """An answer that says the server is saturated: 429, 503, or no answer in time (adaptive.py)."""
    return status in (429, 503) or (error is not None and error.error_type == ErrorType.TIMEOUT)


async def bench_account(db: Database, route: Route, index: int, batch_id: str, error: APIError) -> None:
    """Bench the account for the batch (every engine sees it through the database): raises Rerouted to
    send the row through another, or, with none left, BatchBlocked (the batch pauses)."""
    name = route.lanes[index].account.name
    left = route.bench(index, error.message)
    log.warning("batch %s: account %s benched: %s", batch_id, name, error.message)
    with contextlib.suppress(Exception):  # this engine's own bench holds meanwhile
        await asyncio.to_thread(account_states.bench, db, batch_id, name, error.message)
    if left:
        raise Rerouted()
    raise BatchBlocked(route.reasons(), status=error.status, error_type=ErrorType.NO_ACCOUNT)


class Lane:
    """One account as this engine sends through it."""

    __slots__ = ("account", "headers", "json_headers", "form_headers", "breaker", "gate", "down")

    def __init__(self, account: Account, breaker: Breaker, gate: Gate) -> None:
        self.account = account
        self.breaker = breaker
        self.gate = gate
        #: why this engine cannot use the account at all (None: it can)
        self.down: str | None = None
        self.headers: dict[str, str] = {}
        if account.key is None:
            self.down = f"{account.api_key_env} is not set on this machine"
        elif account.expected_fingerprint not in (None, account.fingerprint()):
            self.down = f"{account.api_key_env} holds another key than the batch was submitted with"
        else:
            self.headers = account.headers(user_agent())
        # Every request's whole headers, built once: aiohttp copies a CIMultiDict as it is (a dict, or a
        # session's default headers merged in, cost it a conversion per request).
        sent = {**self.headers, "Accept-Encoding": ACCEPT_ENCODING}
        self.json_headers = CIMultiDictProxy(CIMultiDict({**sent, "Content-Type": "application/json"}))
        #: a multipart upload's (aiohttp sets its Content-Type with the boundary)
        self.form_headers = CIMultiDictProxy(CIMultiDict(sent))
        if self.down is not None:
            log.warning("account %s benched on this machine: %s", account.name, self.down)

    def __repr__(self) -> str:
        return f"Lane({self.account.name!r}, {self.account.base_url!r})"

    def learn(self, headers: Mapping[str, str]) -> None:
        """After an answer: a server that states its limits is paced by the limiter, not by the gate."""
        if self.gate.active and any(name in headers for name in LIMIT_HEADERS):
            self.gate.active = False


@dataclass(frozen=True, slots=True)
class Target:
    """One account for one (endpoint, model)."""

    index: int  #: the lane's place in the route
    key: LimitKey
    url: str
    #: the model name to put in the body (an Azure deployment named otherwise); None: the body as stored
    body_model: str | None
    #: the model it is priced and counted as
    model: str


class Route:
    """One batch's pool as this engine sends it."""

    def __init__(
        self,
        pool: Pool,
        lanes: tuple[Lane, ...],
        limiter: Limiter,
        given: Limits,
        on_new_key: Callable[[LimitKey], None],
        freed: asyncio.Event,
    ) -> None:
        self.pool = pool
        self.lanes = lanes
        self.limiter = limiter
        self._given = given
        self._on_new_key = on_new_key
        #: why each account is benched for this batch (None: active), by lane index
        self.benched: list[str | None] = [None] * len(lanes)
        self._benched_at = [-math.inf] * len(lanes)
        self._targets: dict[tuple[str, str], tuple[Target, ...]] = {}
        self._lock = asyncio.Lock()
        #: set by every gate when a request leaves (the engine's one event)
        self._freed = freed

    @property
    def pooled(self) -> bool:
        return len(self.lanes) > 1

    def usable(self, index: int) -> bool:
        return self.benched[index] is None and self.lanes[index].down is None

    def targets(self, endpoint: Endpoint, model: str) -> tuple[Target, ...]:
        """The accounts for this endpoint and model, in pool order (cached)."""
        found = self._targets.get((endpoint.name, model))
        if found is None:
            found = self._targets[(endpoint.name, model)] = tuple(
                self._target(i, lane.account, endpoint, model) for i, lane in enumerate(self.lanes)
            )
        return found

    def _target(self, index: int, account: Account, endpoint: Endpoint, model: str) -> Target:
        name = account.deployment_for(model) if account.azure else model
        key = LimitKey(account.base_url, account.fingerprint(), account.organization, name, account.project)
        if account.rpm or account.tpm:
            self.limiter.give(key, Limits(account.rpm or self._given.rpm, account.tpm or self._given.tpm))
        self._on_new_key(key)
        in_body = account.names_model_in_body(endpoint.azure) and name != model
        url = account.url(endpoint.path, endpoint.azure, name)  # intake refused what an account cannot serve
        return Target(index, key, url, name if in_body else None, account.model_of(name))

    def bench(self, index: int, reason: str) -> bool:
        """Bench an account for this batch; True while another account is still usable."""
        self.benched[index] = reason
        self._benched_at[index] = time.monotonic()
        return any(self.usable(i) for i in range(len(self.lanes)))

    def apply(self, benched: Mapping[str, str]) -> None:
        """The batch's benched accounts as the database says (by name; absent: active, e.g. after a
        resume), but for benches this engine made moments ago that the read may not show yet."""
        recent = time.monotonic() - LOCAL_BENCH_SECONDS
        self.benched = [
            benched.get(lane.account.name) or (self.benched[i] if self._benched_at[i] > recent else None)
            for i, lane in enumerate(self.lanes)
        ]

    def reasons(self) -> str:
        """Why no account is left, for the batch's pause reason."""
        parts = [
            f"{lane.account.name}: {self.benched[i] or lane.down}"
            for i, lane in enumerate(self.lanes)
            if not self.usable(i)
        ]
        return "no account of the pool is left: " + "; ".join(parts)

    async def acquire(self, targets: tuple[Target, ...], tokens: int, batch: str, weight: float) -> Target:
        """Reserve one request on the account that grants soonest; NoAccount when every one is benched.

        The chosen lane's gate counts the request in flight: the caller must `leave` it."""
        if len(targets) == 1 and not self.lanes[0].gate.active and self.usable(0):
            await self.limiter.acquire(targets[0].key, tokens, batch, weight)
            self.lanes[0].gate.enter()
            return targets[0]
        if not self._lock.locked():
            found = await self._poll(targets, tokens, batch, weight)
            if isinstance(found, Target):
                return found
        async with self._lock:
            while True:
                found = await self._poll(targets, tokens, batch, weight)
                if isinstance(found, Target):
                    return found
                if found == math.inf:  # every usable account is at its concurrency limit
                    self._freed.clear()
                    await self._freed.wait()
                else:
                    await asyncio.sleep(max(found, MIN_SLEEP))

    async def _poll(
        self, targets: tuple[Target, ...], tokens: int, batch: str, weight: float
    ) -> Target | float:
        soonest, usable = math.inf, False
        for target in targets:
            index = target.index
            if self.benched[index] is not None or self.lanes[index].down is not None:
                continue
            usable = True
            gate = self.lanes[index].gate
            if not gate.room():
                continue
            wait = await self.limiter.try_acquire(target.key, tokens, batch, weight)
            if wait <= 0:
                gate.enter()
                return target
            soonest = min(soonest, wait)
        if not usable:
            raise NoAccount(self.reasons(), error_type=ErrorType.NO_ACCOUNT)
        return soonest


class Routes:
    """Every batch's route in this engine; one lane per account, shared by the batches using it."""

    def __init__(self, settings: Settings, limiter: Limiter, on_new_key: Callable[[LimitKey], None]) -> None:
        self.settings = settings
        self.limiter = limiter
        self._on_new_key = on_new_key
        self._given = Limits(settings.rpm, settings.tpm)
        self._lanes: dict[Account, Lane] = {}
        #: batch id -> its route
        self.by_batch: dict[str, Route] = {}
        self._default: Pool | None = None
        self._freed: asyncio.Event | None = None

    def add(self, batch_id: str, spec: list[dict[str, object]] | None) -> Route:
        """The route of a batch: its stored pool built from this process's environment, or (no pool
        stored) the one account of this process's settings."""
        if spec is None:
            if self._default is None:
                self._default = pool_from_settings(self.settings)
            pool = self._default
        else:
            pool = Pool.from_spec(spec, self.settings.secrets)
        if self._freed is None:
            self._freed = asyncio.Event()
        lanes = tuple(self._lane(account) for account in pool.accounts)
        route = Route(pool, lanes, self.limiter, self._given, self._on_new_key, self._freed)
        self.by_batch[batch_id] = route
        return route

    def _lane(self, account: Account) -> Lane:
        lane = self._lanes.get(account)
        if lane is None:
            settings = self.settings
            assert self._freed is not None
            given = bool(account.rpm or account.tpm or settings.rpm or settings.tpm or settings.limits_file)
            gate = Gate(settings.max_in_flight, self._freed, active=not given)
            breaker = Breaker(settings.breaker_failures, settings.breaker_seconds, settings.max_attempts)
            lane = self._lanes[account] = Lane(account, breaker, gate)
        return lane

    def keys_in_use(self) -> list[str]:
        """Every key this engine sends with (for scrubbing them out of messages read from the APIs)."""
        return [lane.account.key.reveal() for lane in self._lanes.values() if lane.account.key is not None]

    def pooled(self) -> dict[str, Route]:
        """The routes of batches sent through more than one account."""
        return {batch: route for batch, route in self.by_batch.items() if route.pooled}
