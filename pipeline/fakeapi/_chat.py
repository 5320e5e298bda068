"""POST /v1/chat/completions and POST /v1/completions: validation and deterministic answers.

The answer echoes the prompt: chat content is "echo: " + the text of the last user message, a legacy
completion is "echo: " + its prompt. Token counts use `count_tokens` (ceil(len / 4)): a chat prompt
costs the sum over its messages of their text, a completion the count of its content (or of the
function name plus its arguments). When max_tokens (or max_completion_tokens) is below that count, the
content is cut to max_tokens * 4 characters, completion_tokens is max_tokens and finish_reason is
"length"; forced function and tool calls are never cut.

The TPM estimate of a request is its prompt tokens plus, for each of its n choices, max_tokens when
given, else the real completion length. An invalid request is estimated at 0 tokens.

A directive in force (_directives.py; in the last user message when its content is a string, in the
prompt when it is a string) may set the answer's model and its text: every choice's content, or the
arguments of a forced call. Directed text is never cut by max_tokens, finishes "stop" (a forced call
keeps its finish reason) and is counted in usage like any text. The TPM estimate ignores directives.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._directives import Directive, directive_in
from ._plan import Plan
from ._protocol import (
    Answer,
    ApiError,
    check_model_exists,
    count_tokens,
    fingerprint_bytes,
    int_param,
    invalid_type,
    missing_parameter,
    reject_stream,
    require_model,
    unparsable_json,
)

#: Largest `n` OpenAI accepts.
MAX_CHOICES = 128

_SYSTEM_FINGERPRINT = "fp_fake"


@dataclass(frozen=True)
class _Forced:
    """A function the request forces the model to call."""

    style: str  #: "function" (legacy function_call) or "tool" (tool_choice)
    name: str


@dataclass(frozen=True)
class _Completion:
    """The one completion every choice of a request carries."""

    content: str | None
    forced: _Forced | None
    arguments: str
    tokens: int
    finish_reason: str


def plan_chat(raw: bytes, models: Sequence[str] | None) -> Plan:
    fingerprint = fingerprint_bytes(raw)
    try:
        body = load_object(raw)
        model = require_model(body.get("model"))
        prompt_tokens, last_user = _read_messages(body.get("messages"))
        n = int_param(body, "n", low=1, high=MAX_CHOICES) or 1
        limit = _max_tokens(body, "max_completion_tokens") or _max_tokens(body, "max_tokens")
        reject_stream(body)
        directive = directive_in(last_user)
        check_model_exists(model, models)
    except ApiError as error:
        return Plan.failing(fingerprint, error, model_of(raw))
    completion = _complete(text_of(last_user), _forced_call(body), limit)
    estimate = prompt_tokens + n * (limit if limit is not None else completion.tokens)

    def respond(directed: Directive | None) -> Answer:
        answer = _chat_body(_model(model, directed), n, prompt_tokens, _directed(completion, directed))
        return Answer.json(answer)

    return Plan(fingerprint, model, estimate, respond, directive=directive)


def plan_completion(raw: bytes, models: Sequence[str] | None) -> Plan:
    fingerprint = fingerprint_bytes(raw)
    try:
        body = load_object(raw)
        model = require_model(body.get("model"))
        prompts = _read_prompts(body.get("prompt"))
        n = int_param(body, "n", low=1, high=MAX_CHOICES) or 1
        limit = _max_tokens(body, "max_tokens")
        reject_stream(body)
        directive = directive_in(body.get("prompt"))
        check_model_exists(model, models)
    except ApiError as error:
        return Plan.failing(fingerprint, error, model_of(raw))
    completions = [_complete(prompt, None, limit) for prompt in prompts]
    prompt_tokens = sum(count_tokens(prompt) for prompt in prompts)
    estimate = prompt_tokens + n * sum(limit if limit is not None else c.tokens for c in completions)

    def respond(directed: Directive | None) -> Answer:
        texts = [_directed(completion, directed) for completion in completions]
        return Answer.json(_completion_body(_model(model, directed), n, prompt_tokens, texts))

    return Plan(fingerprint, model, estimate, respond, directive=directive)


def load_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise unparsable_json() from None
    if not isinstance(body, dict):
        raise unparsable_json()
    return body


def model_of(raw: bytes) -> str:
    """The model a request names, for rate-limit messages, however broken the rest of it is."""
    try:
        model = orjson.loads(raw).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return model if isinstance(model, str) else ""


def _read_messages(messages: Any) -> tuple[int, Any]:
    """(prompt tokens, content of the last user message) of a valid `messages` array."""
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    tokens, last_user = 0, None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_type(f"messages[{index}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise missing_parameter(f"messages[{index}].role")
        content = message.get("content")
        tokens += count_tokens(text_of(content))
        if role == "user":
            last_user = content
    return tokens, last_user


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(part for part in parts if isinstance(part, str))
    return ""


def _read_prompts(prompt: Any) -> list[str]:
    if prompt is None:
        raise missing_parameter("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return list(prompt)
    raise invalid_type("prompt", "a string or an array of strings", prompt)


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    return int_param(body, name, low=1)


def _forced_call(body: dict[str, Any]) -> _Forced | None:
    """The function `function_call` or `tool_choice` forces, if any."""
    function_call = body.get("function_call")
    if isinstance(function_call, dict) and isinstance(function_call.get("name"), str):
        return _Forced("function", function_call["name"])
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return _Forced("tool", function["name"])
    if tool_choice == "required":
        for tool in body.get("tools") or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                return _Forced("tool", function["name"])
    return None


def _complete(prompt: str, forced: _Forced | None, limit: int | None) -> _Completion:
    if forced is not None:
        arguments = orjson.dumps({"echo": prompt}).decode()
        finish = "function_call" if forced.style == "function" else "tool_calls"
        return _Completion(None, forced, arguments, count_tokens(forced.name + arguments), finish)
    content = f"echo: {prompt}"
    tokens = count_tokens(content)
    if limit is not None and tokens > limit:
        return _Completion(content[: limit * 4], None, "", limit, "length")
    return _Completion(content, None, "", tokens, "stop")


def _directed(completion: _Completion, directive: Directive | None) -> _Completion:
    """The completion with the directive's text, if it sets one: never cut, whatever max_tokens says.

    The text replaces the content, or the arguments of a forced call (a forced call's answer text).
    """
    if directive is None or not directive.shapes_text:
        return completion
    forced = completion.forced
    if forced is not None:
        arguments = directive.text(completion.arguments)
        tokens = count_tokens(forced.name + arguments)
        return _Completion(None, forced, arguments, tokens, completion.finish_reason)
    content = directive.text(completion.content or "")
    return _Completion(content, None, "", count_tokens(content), "stop")


def _model(model: str, directive: Directive | None) -> str:
    """The model an answer names: the request's, unless the directive names another."""
    return directive.model if directive is not None and directive.model is not None else model


def _message(completion: _Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.content, "refusal": None}
    forced = completion.forced
    if forced is None:
        return message
    call = {"name": forced.name, "arguments": completion.arguments}
    if forced.style == "function":
        message["function_call"] = call
    else:
        message["tool_calls"] = [
            {"id": f"call_{secrets.token_hex(12)}", "type": "function", "function": call}
        ]
    return message


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_body(model: str, n: int, prompt_tokens: int, completion: _Completion) -> dict[str, Any]:
    choices = [
        {
            "index": index,
            "message": _message(completion),
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }
        for index in range(n)
    ]
    return {
        "id": f"chatcmpl-{secrets.token_hex(14)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, n * completion.tokens),
        "service_tier": "default",
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }


def _completion_body(
    model: str, n: int, prompt_tokens: int, completions: list[_Completion]
) -> dict[str, Any]:
    # OpenAI orders the choices prompt by prompt, n choices for each.
    choices = [
        {"text": c.content, "index": i * n + j, "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(completions)
        for j in range(n)
    ]
    return {
        "id": f"cmpl-{secrets.token_hex(14)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, n * sum(c.tokens for c in completions)),
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }
