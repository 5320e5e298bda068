"""Offline token estimates: what the limiter reserves before a request is sent."""

from __future__ import annotations

from pipeline.send.tokens import (
    DEFAULT_COMPLETION_TOKENS,
    TOKENS_PER_MESSAGE,
    completion_budget,
    count_tokens,
    estimate_many,
    estimate_request,
)


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
