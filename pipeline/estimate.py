"""`pipeline estimate FILE`: what a job file will cost and how long it will take, before anything is sent.

The file is read exactly as intake reads it (jobs/reader.py: the same validation, the same refusals), and
nothing is stored or sent. Per model:

- prompt tokens counted offline, as the engine counts them for the rate limiter (send/tokens.py, asking
  each line's endpoint for its texts): the text with the model's BPE encoding plus TOKENS_PER_MESSAGE per
  chat message (per input item of the Responses API); embeddings' inputs exactly, each on its own;
- embeddings and moderations have no completion tokens; moderations cost nothing;
- completion tokens: low = the average completion per choice learned from this store's answers of the
  model x n, capped at max_tokens x n (nothing when none is stored yet); high = max_tokens x n where the
  body sets it, else HIGH_FACTOR x (the learned average, or DEFAULT_COMPLETION_TOKENS) x n: such requests
  are counted in `unbounded_requests`, their high is a guess, not a bound;
- audio: whisper-1 by minutes (read from WAV headers; other formats' length is unknown), token-billed
  transcription models by their learned usage;
- cost low/high from the price table in force (prices.load_prices); a model without a price is listed;
  through the Batch API (`via` batch-api) at its price, half the direct one;
- time at the limits in force (given now, else the last learned in limit_states): per model the longer of
  requests / rpm and reserved tokens / tpm; models run side by side, so the longest one. The Batch API
  has limits of its own and answers within its 24 h window: no time is estimated for it.

Documented error of the prompt count: exact for the text of OpenAI models' encodings (with the [tokens]
extra; without it every count is ceil(characters / 4), `prompt_tokens_exact` false); the chat framing the
API adds (3-4 tokens per message and 3 per request) is approximated by TOKENS_PER_MESSAGE per message; a
server that tokenizes otherwise (pipeline's fake counts ceil(characters / 4) and no framing) differs by up
to PROMPT_TEXT_ERROR of the text plus TOKENS_PER_MESSAGE per message and FRAMING_PER_REQUEST per request
(`prompt_error`).
"""

from __future__ import annotations

import contextlib
import math
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.accounts import Pool, pool_from_settings
from pipeline.endpoints import BY_URL, Endpoint
from pipeline.errors import JobFileError, LineError
from pipeline.jobs.reader import JobLine, JobReader
from pipeline.prices import PriceTable, base_model
from pipeline.ratelimit import limit_table
from pipeline.ratelimit.rules import Limits, in_force
from pipeline.send.tokens import DEFAULT_COMPLETION_TOKENS, TOKENS_PER_MESSAGE, count_prompts, exact
from pipeline.settings import Settings
from pipeline.store import limit_states, usage
from pipeline.store.db import Database
from pipeline.store.models import Via

#: Requests read and counted at a time (one tokenizer call per encoding per chunk).
CHUNK = 5000
#: Without max_tokens, the high bound assumes answers this many times the average.
HIGH_FACTOR = 4
#: Share of a prompt's text another tokenizer may count differently (see the module docstring).
PROMPT_TEXT_ERROR = 0.25
#: Tokens of framing per request a server may add or leave out.
FRAMING_PER_REQUEST = 3
#: Bad lines kept to show.
MAX_SHOWN_ERRORS = 50


def prompt_error(prompt_tokens: int, messages: int, requests: int) -> float:
    """How far the offline prompt count may be from what another tokenizer reports (see the docstring)."""
    return PROMPT_TEXT_ERROR * prompt_tokens + TOKENS_PER_MESSAGE * messages + FRAMING_PER_REQUEST * requests


@dataclass
class ModelEstimate:
    """One model's requests in the file."""

    model: str
    requests: int = 0
    messages: int = 0
    prompt_tokens: int = 0
    completion_low: int = 0
    completion_high: int = 0
    unbounded_requests: int = 0
    audio_seconds: float = 0.0
    audio_unknown: int = 0  #: audio requests whose length could not be read
    reserved_tokens: int = 0  #: what the rate limiter will reserve, against the TPM limit
    #: learned (from stored answers), assumed, audio (priced by length) or none (no completion)
    completion_source: str = "assumed"
    free: bool = False  #: the endpoint charges nothing (moderations)
    cost_low: float | None = None
    cost_high: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    seconds: float | None = None


@dataclass
class Estimate:
    """The whole file."""

    file: str
    requests: int = 0
    invalid: int = 0
    models: list[ModelEstimate] = field(default_factory=list)
    prices_as_of: str = ""
    #: how the batch would be sent: directly, or through the Batch API (half price, its own limits)
    via: Via = Via.DIRECT
    #: prompt counts are exact BPE counts (the [tokens] extra), not ceil(characters / 4)
    prompt_tokens_exact: bool = True

    def as_json(self) -> dict[str, Any]:
        """The `estimate --json` contract."""
        priced = [m for m in self.models if m.cost_low is not None]
        secs = [m.seconds for m in self.models]
        return {
            "file": self.file,
            "requests": self.requests,
            "invalid": self.invalid,
            "prompt_tokens": sum(m.prompt_tokens for m in self.models),
            "completion_tokens": {
                "low": sum(m.completion_low for m in self.models),
                "high": sum(m.completion_high for m in self.models),
            },
            "unbounded_requests": sum(m.unbounded_requests for m in self.models),
            "cost_usd": {
                "low": round(sum(m.cost_low or 0.0 for m in priced), 6),
                "high": round(sum(m.cost_high or 0.0 for m in priced), 6),
            },
            "unpriced_models": sorted(m.model for m in self.models if m.cost_low is None),
            "seconds": None if not secs or None in secs else round(max(s or 0.0 for s in secs), 1),
            "prices_as_of": self.prices_as_of,
            "via": self.via.value,
            "prompt_tokens_exact": self.prompt_tokens_exact,
            "models": [asdict(m) for m in self.models],
        }


def estimate_file(
    db: Database,
    settings: Settings,
    path: str,
    prices: PriceTable,
    *,
    endpoint: str | None = None,
    skip_invalid: bool = False,
    via: Via = Via.DIRECT,
) -> Estimate:
    """Estimate the job file sent `via` one way or the other; JobFileError when it has bad lines (unless
    `skip_invalid`), like intake."""
    reader = JobReader(
        path, endpoint, max_line_bytes=settings.max_line_bytes, audio_roots=settings.audio_roots
    )
    learned = _learned_averages(db)
    result = Estimate(str(path), prices_as_of=prices.as_of, via=via, prompt_tokens_exact=exact())
    by_model: dict[str, ModelEstimate] = {}
    shown: list[LineError] = []
    pending: list[JobLine] = []
    for item in reader:
        if isinstance(item, LineError):
            result.invalid += 1
            if len(shown) < MAX_SHOWN_ERRORS:
                shown.append(item)
            continue
        pending.append(item)
        if len(pending) >= CHUNK:
            _count(pending, by_model, learned)
            pending.clear()
    _count(pending, by_model, learned)
    if result.invalid and (not skip_invalid or not by_model):
        raise JobFileError(shown, result.invalid)
    result.models = sorted(by_model.values(), key=lambda m: m.model)
    result.requests = sum(m.requests for m in result.models)
    pool = pool_from_settings(settings)
    prices = prices.with_aliases(pool.aliases())  # Azure deployments priced as the models they serve
    for m in result.models:
        _price(m, prices, via)
        if via == Via.DIRECT:
            _time(m, db, settings, pool)
    return result


def _count(lines: list[JobLine], by_model: dict[str, ModelEstimate], learned: dict[str, float]) -> None:
    endpoints = [BY_URL[line.url] for line in lines]
    prompts = count_prompts(endpoints, [line.body for line in lines])
    for line, endpoint, prompt in zip(lines, endpoints, prompts, strict=True):
        model = endpoint.model_of(line.body)
        if line.audio_path is not None:  # an upload (audio): priced by its length
            m = by_model.setdefault(model, ModelEstimate(model, completion_source="audio"))
            m.requests += 1
            seconds = _wav_seconds(line.audio_path)
            m.audio_seconds += seconds or 0.0
            m.audio_unknown += seconds is None
            continue
        m = by_model.setdefault(model, ModelEstimate(model, free=endpoint.free))
        m.requests += 1
        m.messages += endpoint.messages(line.body)
        m.prompt_tokens += prompt
        if endpoint.completes:
            _count_completion(m, endpoint, line.body, prompt, learned.get(base_model(model)))
        else:  # no answer tokens (embeddings, moderations): the prompt is the whole estimate
            m.completion_source = "none"
            m.reserved_tokens += prompt + (endpoint.completion_cap(line.body) or 0)


def _count_completion(
    m: ModelEstimate, endpoint: Endpoint, body: dict[str, Any], prompt: int, average: float | None
) -> None:
    """Completion tokens low and high, and what the limiter will reserve, for a request that completes."""
    n, cap = endpoint.choices(body), endpoint.completion_cap(body)
    if average is not None:
        m.completion_source = "learned"
    low = math.ceil((average or 0.0) * n)
    typical = math.ceil(average or DEFAULT_COMPLETION_TOKENS) * n
    m.unbounded_requests += cap is None
    m.completion_low += min(low, cap) if cap is not None else low
    m.completion_high += cap if cap is not None else HIGH_FACTOR * typical
    m.reserved_tokens += prompt + (cap if cap is not None else typical)


def _price(m: ModelEstimate, prices: PriceTable, via: Via) -> None:
    if m.free:
        m.cost_low = m.cost_high = 0.0
        return
    low = prices.cost(m.model, via.value, m.prompt_tokens, 0, m.completion_low, m.audio_seconds)
    high = prices.cost(m.model, via.value, m.prompt_tokens, 0, m.completion_high, m.audio_seconds)
    m.cost_low = None if low is None else round(low, 6)
    m.cost_high = None if high is None else round(high, 6)


def _time(m: ModelEstimate, db: Database, settings: Settings, pool: Pool) -> None:
    """Time at the limits given or learned, summed over the pool's accounts that have one (a pool's rows
    flow to every account with budget)."""
    table = limit_table(settings)
    m.rpm = m.tpm = None
    for account in pool.accounts:
        name = account.deployment_for(m.model) if account.azure else m.model
        given = table.for_model(name)
        given = Limits(account.rpm or given.rpm, account.tpm or given.tpm)
        states = limit_states.limit_states(db, account.base_url, account.fingerprint())
        known = {st.model: st for st in states}.get(name)
        rpm = in_force(given.rpm, known.rpm if known else None)[0]
        tpm = in_force(given.tpm, known.tpm if known else None)[0]
        m.rpm = (m.rpm or 0) + rpm if rpm else m.rpm
        m.tpm = (m.tpm or 0) + tpm if tpm else m.tpm
    spans = []
    if m.rpm:
        spans.append(m.requests / m.rpm * 60)
    if m.tpm and m.reserved_tokens:
        spans.append(m.reserved_tokens / m.tpm * 60)
    m.seconds = round(max(spans), 1) if spans else None


def _learned_averages(db: Database) -> dict[str, float]:
    """Completion tokens per choice, per model (date suffix dropped), over this store's answers."""
    averages: dict[str, list[float]] = {}
    for model, tokens, choices in usage.completion_totals(db):
        total = averages.setdefault(base_model(model), [0.0, 0.0])
        total[0] += tokens
        total[1] += choices
    return {model: t / c for model, (t, c) in averages.items() if c}


def _wav_seconds(path: Path | None) -> float | None:
    """The length of a WAV clip from its header; None for other formats."""
    if path is None or path.suffix.lower() != ".wav":
        return None
    with contextlib.suppress(OSError, EOFError, wave.Error), wave.open(str(path), "rb") as clip:
        return clip.getnframes() / float(clip.getframerate())
    return None
