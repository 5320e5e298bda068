"""Offline token estimates: what the limiter reserves before a request is sent."""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from pipeline.ratelimit.local import LocalLimiter
from pipeline.ratelimit.rules import LimitTable
from pipeline.send.estimates import Estimator
from pipeline.send.routing import Routes
from pipeline.send.tokens import (
    DEFAULT_COMPLETION_TOKENS,
    TOKENS_PER_MESSAGE,
    completion_budget,
    count_tokens,
    estimate_many,
    estimate_request,
)
from pipeline.settings import Settings
from pipeline.store.claims import Claimed


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def test_counts_are_real_bpe_counts_offline() -> None:
    assert count_tokens("hello world", "gpt-4") == 2
    assert count_tokens("", "gpt-4") == 0


def test_max_tokens_times_n_is_reserved() -> None:
    prompt = count_tokens("hi there", "gpt-4o-mini") + TOKENS_PER_MESSAGE
    assert estimate_request(chat("hi there", max_tokens=10, n=3)) == prompt + 30
    assert completion_budget(chat("x", max_completion_tokens=7, n=2)) == 14
    assert completion_budget(chat("x")) is None


def test_without_max_tokens_the_learned_average_replaces_the_default() -> None:
    prompt = count_tokens("hi there", "gpt-4o-mini") + TOKENS_PER_MESSAGE
    assert estimate_request(chat("hi there")) == prompt + DEFAULT_COMPLETION_TOKENS
    assert estimate_request(chat("hi there", n=2), {"gpt-4o-mini": 12.2}) == prompt + 2 * 13
    assert estimate_request(chat("hi there"), {"other-model": 5}) == prompt + DEFAULT_COMPLETION_TOKENS


def test_batch_estimates_equal_single_ones() -> None:
    bodies = [chat(f"question number {i} " * i, max_tokens=i + 1) for i in range(20)]
    bodies.append({"model": "gpt-3.5-turbo-instruct", "prompt": ["a b c", "d e"], "max_tokens": 5})
    assert estimate_many(bodies) == [estimate_request(b) for b in bodies]


def test_prompts_are_counted_exactly_only_once_tokens_can_matter(tmp_path: Path) -> None:
    """No tokens-per-minute limit and no spend cap: ceil(characters / 4), no encoding loaded. A spend cap
    on the batch, or a limit given or learned (`exact`): the BPE count."""
    settings = Settings.load(environ={"OPENAI_API_KEY": "sk-test", "PIPELINE_DATA_DIR": str(tmp_path)})
    routes = Routes(settings, LocalLimiter(LimitTable()), lambda key: None)
    routes.add("capped", None)
    routes.add("free", None)
    text = "the quick brown fox jumps over the lazy dog " * 5
    exact = count_tokens(text, "gpt-4o-mini") + TOKENS_PER_MESSAGE
    rough = math.ceil(len(text) / 4) + TOKENS_PER_MESSAGE
    assert exact != rough
    body = orjson.dumps(chat(text, max_tokens=5)).decode()
    url = "/v1/chat/completions"
    rows = [Claimed(i, batch, f"c{i}", url, body, 0, 0) for i, batch in enumerate(["free", "capped"])]
    estimator = Estimator()

    def prompts(chunk: list[Claimed]) -> list[int]:
        jobs = estimator.prepare(chunk, routes.by_batch, lambda batch: batch == "capped")
        assert [job.estimate for job in jobs] == [job.prompt_tokens + 5 for job in jobs]
        return [job.prompt_tokens for job in jobs]

    assert prompts(rows[:1]) == [rough]
    assert prompts(rows) == [exact, exact]  # the chunk holds a capped batch's row
    estimator.exact = True
    assert prompts(rows[:1]) == [exact]
