"""What a claimed request will cost against the rate limit: its key, its estimate, what it was charged.

Estimates are made for a chunk at once, off the event loop: the prompt counted offline (tokens.py) plus
max_tokens x n, or, when the body sets no max_tokens, the moving average of real completion lengths per
choice this engine has seen for the model. After the answer, the limiter is settled with what the API
counted (`charged`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from pipeline.endpoints import AUDIO_URLS
from pipeline.errors import APIError
from pipeline.ratelimit.rules import LimitKey
from pipeline.send.responses import Parsed, Usage, usage_of
from pipeline.send.tokens import completion_budget, completion_reserve, prompt_counts
from pipeline.settings import Settings
from pipeline.store.claims import AttemptRecord, Claimed, Outcome
from pipeline.store.models import RequestStatus

#: Weight of a new answer in the moving average of completion lengths.
LEARNING_RATE = 0.05


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed row ready to send: whose budget it spends and how many tokens to reserve."""

    row: Claimed
    key: LimitKey
    #: tokens reserved against the TPM limit: the prompt plus the completion budget
    estimate: int
    #: the prompt's part of `estimate`, counted offline
    prompt_tokens: int
    #: max_tokens x n when the body sets max_tokens: what the API charges against the TPM limit
    completion_cap: int | None
    #: the audio `response_format` (None: JSON)
    response_format: str | None

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
            model=self.key.model,
        )


class Estimator:
    """Prepares claimed rows for sending, and learns completion lengths from the answers."""

    def __init__(self, settings: Settings, key_fingerprint: str) -> None:
        self.settings = settings
        self.key_fingerprint = key_fingerprint
        #: model -> moving average of completion tokens per choice, for estimates without max_tokens
        self._completion_avg: dict[str, float] = {}

    def prepare(self, rows: list[Claimed]) -> list[Job]:
        """Parse the bodies and estimate their tokens, all at once and off the event loop."""
        bodies: list[dict[str, Any]] = [orjson.loads(row.body) for row in rows]
        # Audio reserves no tokens: whisper-1 is limited by requests alone, and token-billed transcription
        # models are charged their real usage when the answer settles.
        chat = [i for i, row in enumerate(rows) if row.url not in AUDIO_URLS]
        prompts, completions = [0] * len(rows), [0] * len(rows)
        chat_bodies = [bodies[i] for i in chat]
        for i, prompt, body in zip(chat, prompt_counts(chat_bodies), chat_bodies, strict=True):
            prompts[i] = prompt
            completions[i] = completion_reserve(body, self._completion_avg)
        fingerprint, org = self.key_fingerprint, self.settings.organization
        return [
            Job(
                row,
                LimitKey(
                    self.settings.base_url, fingerprint, org, str(body.get("model")), self.settings.project
                ),
                prompt + completion,
                prompt,
                completion_budget(body) if row.url not in AUDIO_URLS else None,
                body.get("response_format") if row.url in AUDIO_URLS else None,
            )
            for row, body, prompt, completion in zip(rows, bodies, prompts, completions, strict=True)
        ]

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
    )
