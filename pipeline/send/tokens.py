"""Offline token estimates, for reserving rate-limit budget before a request is sent.

`count_tokens` is the seam: toktok's compiled-in BPE encodings when installed (the `pipeline-bulk[tokens]`
extra: exact for OpenAI models), else an estimate of ceil(characters / 4); `exact()` says which, and
`pipeline estimate` shows it. Nothing here touches the network (tiktoken would download its encodings at
first use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

try:
    import toktok
except ImportError:  # the [tokens] extra is not installed: counts are estimates
    toktok = None


class Counts(Protocol):
    """What counting a body's prompt asks of its endpoint (`endpoints.Endpoint` is one): the endpoints use
    this module's counts, so it names none of them."""

    def model_of(self, body: dict[str, Any]) -> str: ...
    def prompt_texts(self, body: dict[str, Any]) -> list[str]: ...
    def prompt_overhead(self, body: dict[str, Any]) -> int: ...


#: Tokens the API adds per chat message (role and separators), as OpenAI's cookbook counts them.
TOKENS_PER_MESSAGE = 4
#: Output tokens assumed when a request sets no max_tokens and nothing has been learned yet.
DEFAULT_COMPLETION_TOKENS = 256


def exact() -> bool:
    """Are prompt counts exact BPE counts (toktok installed), or ceil(characters / 4) estimates?"""
    return toktok is not None


def encoding_for(model: str) -> str:
    return (
        "o200k_base" if model.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")) else "cl100k_base"
    )


def count_tokens(text: str, model: str = "") -> int:
    if not text:
        return 0
    if toktok is not None:
        return int(toktok.batch_count([text], encoding_for(model))[0])
    return math.ceil(len(text) / 4)


def prompt_text(body: dict[str, Any]) -> str:
    """All the text of a request that the API counts as prompt."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            parts.append(_text_of(message.get("content")))
            for key in ("tool_calls", "function_call", "name"):
                if message.get(key):
                    parts.append(str(message[key]))
    prompt = body.get("prompt")
    if prompt is not None:
        parts.append(_text_of(prompt))
    for key in ("functions", "tools"):
        if body.get(key):
            parts.append(str(body[key]))
    return "\n".join(p for p in parts if p)


def estimate_request(body: dict[str, Any], learned: Mapping[str, float] | None = None) -> int:
    """Tokens to reserve: the prompt, plus max_tokens (or a learned or default length) per choice of `n`."""
    return estimate_many([body], learned)[0]


def _default_for(body: dict[str, Any], learned: Mapping[str, float]) -> int:
    average = learned.get(str(body.get("model", "")))
    return math.ceil(average) if average else DEFAULT_COMPLETION_TOKENS


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def estimate_many(bodies: list[dict[str, Any]], learned: Mapping[str, float] | None = None) -> list[int]:
    """`estimate_request` for many bodies at once: one tokenizer call per encoding (about 50x cheaper).

    Without max_tokens, a choice is assumed as long as `learned[model]` (the real average so far), else
    DEFAULT_COMPLETION_TOKENS.
    """
    learned = learned or {}
    return [
        prompt + _completion_budget(body, _default_for(body, learned))
        for prompt, body in zip(prompt_counts(bodies), bodies, strict=True)
    ]


def prompt_counts(bodies: list[dict[str, Any]]) -> list[int]:
    """Prompt tokens of each body, counted offline: the text with the model's encoding (one tokenizer call
    per encoding), plus TOKENS_PER_MESSAGE per chat message for the chat format's framing."""
    texts = [prompt_text(body) for body in bodies]
    counts = [0] * len(bodies)
    if toktok is not None:
        by_encoding: dict[str, list[int]] = {}
        for i, body in enumerate(bodies):
            if texts[i]:
                by_encoding.setdefault(encoding_for(str(body.get("model", ""))), []).append(i)
        for encoding, indexes in by_encoding.items():
            for i, n in zip(indexes, toktok.batch_count([texts[i] for i in indexes], encoding), strict=True):
                counts[i] = int(n)
    else:
        counts = [math.ceil(len(text) / 4) for text in texts]
    return [
        count + TOKENS_PER_MESSAGE * len(body.get("messages") or [])
        for count, body in zip(counts, bodies, strict=True)
    ]


def count_prompts(
    endpoints: Sequence[Counts], bodies: Sequence[dict[str, Any]], *, exact: bool = True
) -> list[int]:
    """Prompt tokens of each body as its endpoint counts them: each of its texts with the model's encoding
    (one tokenizer call per encoding for them all), plus the endpoint's overhead (framing, token ids).

    `exact` False: ceil(characters / 4) per text even with toktok installed, for callers that only need
    an order of magnitude (loading an encoding costs ~0.5 CPU-s per process)."""
    counts = [endpoint.prompt_overhead(body) for endpoint, body in zip(endpoints, bodies, strict=True)]
    by_encoding: dict[str, tuple[list[int], list[str]]] = {}
    for i, (endpoint, body) in enumerate(zip(endpoints, bodies, strict=True)):
        texts = [text for text in endpoint.prompt_texts(body) if text]
        if texts:
            owners, pending = by_encoding.setdefault(encoding_for(endpoint.model_of(body)), ([], []))
            owners.extend([i] * len(texts))
            pending.extend(texts)
    for encoding, (owners, texts) in by_encoding.items():
        if toktok is not None and exact:
            found = [int(n) for n in toktok.batch_count(texts, encoding)]
        else:
            found = [math.ceil(len(text) / 4) for text in texts]
        for i, n in zip(owners, found, strict=True):
            counts[i] += n
    return counts


def typical_completion(model: str, learned: Mapping[str, float]) -> int:
    """Completion tokens assumed per choice of a request that sets no cap: the model's learned average,
    else DEFAULT_COMPLETION_TOKENS."""
    average = learned.get(model)
    return math.ceil(average) if average else DEFAULT_COMPLETION_TOKENS


def completion_budget(body: dict[str, Any]) -> int | None:
    """max_tokens (or max_completion_tokens) x n when the body sets one, else None."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(limit, int) or limit <= 0:
        return None
    return _completion_budget(body, limit)


def _completion_budget(body: dict[str, Any], completion_default: int) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    per_choice = limit if isinstance(limit, int) and limit > 0 else completion_default
    n_choices = body.get("n")
    return per_choice * (n_choices if isinstance(n_choices, int) and n_choices > 0 else 1)
