"""POST /v1/chat/completions: messages in, `choices` out; and the reading of `choices` answers both chat and
legacy completions share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pipeline.endpoints.base import Body, Endpoint, Parsed, as_str, lacks, usage_tokens
from pipeline.endpoints.checks import check_counts, check_stream, check_string, json_type, one_of
from pipeline.send.tokens import TOKENS_PER_MESSAGE, completion_budget, prompt_text

#: roles a chat message may have
CHAT_ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class Choices(Endpoint):
    """An endpoint answered with `choices` (chat and legacy completions): one prompt text, `n` choices,
    `max_tokens` each."""

    def prompt_texts(self, body: Body) -> list[str]:
        return [prompt_text(body)]

    def completion_cap(self, body: Body) -> int | None:
        return completion_budget(body)

    def choices(self, body: Body) -> int:
        n = body.get("n")
        return n if isinstance(n, int) and n > 0 else 1

    def parse(self, data: dict[str, Any]) -> Parsed | str:
        return parse_choices(data)


class Chat(Choices):
    """Chat completions."""

    def validate(self, body: Body, base_dir: Path) -> str | None:
        return check_chat(body) or check_stream(body)

    def prompt_overhead(self, body: Body) -> int:
        return TOKENS_PER_MESSAGE * self.messages(body)

    def messages(self, body: Body) -> int:
        return len(body.get("messages") or [])


def check_chat(body: Body) -> str | None:
    """A /v1/chat/completions body."""
    problem = check_string(body, "model")
    if problem:
        return problem
    if "messages" not in body:
        return "body.messages: required"
    messages = body["messages"]
    if not isinstance(messages, list):
        return f"body.messages: must be a list, got {json_type(messages)}"
    if not messages:
        return "body.messages: must not be empty"
    for index, message in enumerate(messages):
        problem = _check_message(message)
        if problem:
            return f"body.messages[{index}]{problem}"
    return check_counts(body, ("n", "max_tokens", "max_completion_tokens"))


def _check_message(message: object) -> str | None:
    """One chat message; the problem comes back without its `body.messages[i]` prefix."""
    if not isinstance(message, dict):
        return f": must be an object, got {json_type(message)}"
    if "role" not in message:
        return ".role: required"
    role = message["role"]
    if not isinstance(role, str):
        return f".role: must be a string, got {json_type(role)}"
    if role not in CHAT_ROLES:
        return f".role: unknown role {role!r} (expected one of {one_of(CHAT_ROLES)})"
    content = message.get("content")
    if content is None:
        # An assistant turn that only calls tools has no content; every other message needs the key.
        calls = role == "assistant" and ("tool_calls" in message or "function_call" in message)
        return None if calls or "content" in message else ".content: required"
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f".content: must be a string, a list of parts or null, got {json_type(content)}"
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            return f".content[{index}]: must be an object, got {json_type(part)}"
    return None


def parse_choices(data: dict[str, Any]) -> Parsed | str:
    """A chat or legacy completion answer: a JSON object with a non-empty list of `choices` objects."""
    choices = data.get("choices")
    if not (isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices)):
        return lacks(data, "choices")
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    prompt, completion, total, cached, reasoning = usage_tokens(usage)
    return Parsed(
        response_id=as_str(data.get("id")),
        model=as_str(data.get("model")),
        finish_reasons="|".join(str(c.get("finish_reason")) for c in choices),
        output=_first_output(choices[0]),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _first_output(choice: dict[str, Any]) -> str | None:
    if "text" in choice:  # legacy completions
        return as_str(choice.get("text"))
    message = choice.get("message") or {}
    content = message.get("content")
    if content is not None:
        return content if isinstance(content, str) else orjson.dumps(content).decode()
    for key in ("tool_calls", "function_call"):
        if message.get(key):
            return orjson.dumps(message[key]).decode()
    return None
