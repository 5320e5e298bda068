"""POST /v1/completions: the legacy completions, a `prompt` in, `choices` out (read as chat's are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.endpoints.base import Body
from pipeline.endpoints.chat import Choices
from pipeline.endpoints.checks import check_counts, check_stream, check_string, is_int, json_type

_PROMPT_TYPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


class Completions(Choices):
    """Legacy text completions."""

    def validate(self, body: Body, base_dir: Path) -> str | None:
        return check_completions(body) or check_stream(body)


def check_completions(body: Body) -> str | None:
    """A /v1/completions body."""
    problem = check_string(body, "model")
    if problem:
        return problem
    if "prompt" not in body:
        return "body.prompt: required"
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return check_counts(body, ("n", "max_tokens"))
    if not isinstance(prompt, list):
        return f"body.prompt: must be {_PROMPT_TYPES}, got {json_type(prompt)}"
    if not prompt:
        return "body.prompt: must not be empty"
    if not _is_prompt_list(prompt):
        return f"body.prompt: must be {_PROMPT_TYPES}"
    return check_counts(body, ("n", "max_tokens"))


def _is_prompt_list(prompt: list[Any]) -> bool:
    """A list of strings, of token ids, or of token-id lists (never mixed)."""
    first = prompt[0]
    if isinstance(first, str):
        return all(isinstance(item, str) for item in prompt)
    if is_int(first):
        return all(is_int(item) for item in prompt)
    return all(isinstance(item, list) and item and all(is_int(t) for t in item) for item in prompt)
