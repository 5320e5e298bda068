"""What a claimed request will cost against the rate limit: its key, its estimate, what it was charged.

Estimates are made for a chunk at once, off the event loop, each as its endpoint says: the prompt counted
offline (tokens.py) plus the completion cap (max_tokens x n), or, when the body sets none and the endpoint
answers with completion tokens, the moving average of real completion lengths per choice this engine has
seen for the model. After the answer, the limiter is settled with what the API counted (`charged`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.endpoints import Endpoint, by_url
from pipeline.errors import APIError
from pipeline.ratelimit.rules import LimitKey
from pipeline.send.responses import Parsed, Usage, usage_of
from pipeline.send.tokens import count_prompts, typical_completion
from pipeline.store.claims import AttemptRecord, Claimed, Outcome
from pipeline.store.models import RequestStatus

if TYPE_CHECKING:
    from pipeline.send.routing import Route, Target

#: Weight of a new answer in the moving average of completion lengths.
LEARNING_RATE = 0.05


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class Job:
    """A claimed row ready to send: whose budget it spends and how many tokens to reserve."""

    row: Claimed
    #: the endpoint of the row's url, looked up once
    endpoint: Endpoint
    #: the first account's limit key (the only one, outside pools)
    key: LimitKey
    #: tokens reserved against the TPM limit: the prompt plus the completion budget
    estimate: int
    #: the prompt's part of `estimate`, counted offline
    prompt_tokens: int
    #: max_tokens x n when the body sets max_tokens: what the API charges against the TPM limit
    completion_cap: int | None
    #: the answer comes as plain text (audio's text, srt, vtt), not a JSON object
    plain_text: bool
    #: the batch's pool, and each of its accounts for this row's endpoint and model (routing.py)
    route: Route
    targets: tuple[Target, ...]
    #: the model the row is priced and counted as (a deployment's model)
    model: str

    def outcome(
        self,
        status: RequestStatus,
        records: list[AttemptRecord],
        error_type: str | None = None,
        error_message: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> Outcome:
        """What became of the job, for the writer: the row's attempts, answer and status, and whose usage
        counters (batch, model) the attempts add to."""
        row = self.row
        return Outcome(
            row.id,
            row.fence,
            status,
            records,
            result,
            error_type,
            error_message,
            batch_id=row.batch_id,
            model=self.model,
        )


class Estimator:
    """Prepares claimed rows for sending, and learns completion lengths from the answers.

    Prompts are counted exactly (toktok's BPE) once tokens can matter here: a tokens-per-minute limit given
    or learned (`exact`, set by the engine and kept), or a spend cap on a batch of the chunk. Until then
    they are ceil(characters / 4): no limit paces them, and no encoding is loaded (~0.5 CPU-s a process).
    The limiter is settled with what the API counted, whatever was reserved."""

    def __init__(self, exact: bool = False) -> None:
        #: model -> moving average of completion tokens per choice, for estimates without max_tokens
        self._completion_avg: dict[str, float] = {}
        #: count prompts exactly from now on (a tokens-per-minute limit is given or was learned)
        self.exact = exact

    def prepare(
        self, rows: list[Claimed], routes: Mapping[str, Route], capped: Callable[[str], bool]
    ) -> list[Job]:
        """Parse the bodies and estimate their tokens, all at once and off the event loop; each row's
        accounts come from its batch's route. `capped(batch_id)`: the batch has a spend cap (the worst
        case it reserves counts the prompt exactly)."""
        endpoints = [by_url(row.url) for row in rows]
        bodies: list[dict[str, Any]] = [orjson.loads(row.body) for row in rows]
        exact = self.exact or any(capped(batch_id) for batch_id in {row.batch_id for row in rows})
        jobs = []
        for row, endpoint, body, prompt in zip(
            rows, endpoints, bodies, count_prompts(endpoints, bodies, exact=exact), strict=True
        ):
            model = endpoint.model_of(body)
            cap = endpoint.completion_cap(body)
            completion = cap if cap is not None else self._guess(endpoint, body, model)
            route = routes[row.batch_id]
            targets = route.targets(endpoint, model)
            first = targets[0]
            plain = endpoint.plain_text(body)
            estimate = prompt + completion
            jobs.append(
                Job(row, endpoint, first.key, estimate, prompt, cap, plain, route, targets, first.model)
            )
        return jobs

    def _guess(self, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
        """Completion tokens to reserve for a body without a cap. Audio reserves none: whisper-1 is limited
        by requests alone, and token-billed transcription models are charged their real usage when the
        answer settles."""
        if not endpoint.completes:
            return 0
        return typical_completion(model, self._completion_avg) * endpoint.choices(body)

    def learn(self, model: str, result: dict[str, Any]) -> None:
        """Average real completion length per choice, reserved for later requests that set no max_tokens."""
        tokens, reasons = result.get("completion_tokens"), result.get("finish_reasons")
        if not isinstance(tokens, int) or not reasons:
            return
        per_choice = tokens / (reasons.count("|") + 1)
        previous = self._completion_avg.get(model)
        self._completion_avg[model] = (
            per_choice if previous is None else previous + LEARNING_RATE * (per_choice - previous)
        )


def charged_tokens(job: Job, status: int | None, prompt: int | None, total: int | None) -> int | None:
    """Tokens the API counted against the TPM limit for this attempt.

    It counts prompt + max_tokens x n when the request arrives (not the shorter real answer), so that is what
    the limiter is settled with; a 429 was refused before counting; None (no usage) keeps the reservation.
    """
    if status == 429:
        return 0
    if job.completion_cap is not None and prompt is not None:
        return prompt + job.completion_cap
    return total


def usage(parsed: Parsed | None, raw: bytes) -> Usage:
    """The usage the attempt reported, failed ones included (all None when none)."""
    if parsed is not None:
        return Usage(
            parsed.prompt_tokens,
            parsed.completion_tokens,
            parsed.total_tokens,
            parsed.cached_tokens,
            parsed.audio_seconds,
            parsed.reasoning_tokens,
        )
    return usage_of(raw) if raw else Usage()


def attempt_record(
    number: int,
    started: datetime,
    latency_ms: float,
    status: int | None,
    error: APIError | None,
    headers: Mapping[str, str],
    used: Usage,
) -> AttemptRecord:
    """The attempts row of one exchange: its outcome and what the answer said it charged."""
    return AttemptRecord(
        number,
        started,
        latency_ms,
        status,
        error.error_type if error else None,
        error.message if error else None,
        headers.get("x-request-id"),
        used.prompt_tokens,
        used.completion_tokens,
        used.total_tokens,
        used.cached_tokens,
        used.audio_seconds,
        reasoning_tokens=used.reasoning_tokens,
    )
