"""Per-endpoint checks of a request body, used by the job-file reader.

Each check returns the first problem as `"body.messages[2].role: required"`, or None when the body is fine.
Only what would make the request fail for certain is checked; every other parameter passes through untouched,
so new API parameters work without a change here.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.endpoints import (
    AUDIO_EXTENSIONS,
    AUDIO_HEAD_BYTES,
    AUDIO_RESPONSE_FORMATS,
    AUDIO_SIGNATURES,
    ENDPOINTS,
    MAX_AUDIO_BYTES,
    audio_format_matches,
)
from pipeline.jobs.paths import audio_outside

#: roles a chat message may have
CHAT_ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

_PROMPT_TYPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _one_of(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `"n": true` is not a count
    return isinstance(value, int) and not isinstance(value, bool)


def _check_string(body: dict[str, Any], key: str) -> str | None:
    """A required non-empty string, such as `model`."""
    if key not in body:
        return f"body.{key}: required"
    value = body[key]
    if not isinstance(value, str):
        return f"body.{key}: must be a string, got {json_type(value)}"
    return None if value else f"body.{key}: must not be empty"


def _check_counts(body: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Optional positive integers; null means "use the default", as in the API."""
    for key in keys:
        value = body.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            return f"body.{key}: must be a positive integer, got {value!r}"
    return None


def check_chat(body: dict[str, Any]) -> str | None:
    """A /v1/chat/completions body."""
    problem = _check_string(body, "model")
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
    return _check_counts(body, ("n", "max_tokens", "max_completion_tokens"))


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
        return f".role: unknown role {role!r} (expected one of {_one_of(CHAT_ROLES)})"
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


def check_completions(body: dict[str, Any]) -> str | None:
    """A /v1/completions body."""
    problem = _check_string(body, "model")
    if problem:
        return problem
    if "prompt" not in body:
        return "body.prompt: required"
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return _check_counts(body, ("n", "max_tokens"))
    if not isinstance(prompt, list):
        return f"body.prompt: must be {_PROMPT_TYPES}, got {json_type(prompt)}"
    if not prompt:
        return "body.prompt: must not be empty"
    if not _is_prompt_list(prompt):
        return f"body.prompt: must be {_PROMPT_TYPES}"
    return _check_counts(body, ("n", "max_tokens"))


def _is_prompt_list(prompt: list[Any]) -> bool:
    """A list of strings, of token ids, or of token-id lists (never mixed)."""
    first = prompt[0]
    if isinstance(first, str):
        return all(isinstance(item, str) for item in prompt)
    if _is_int(first):
        return all(_is_int(item) for item in prompt)
    return all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in prompt)


def check_stream(body: dict[str, Any]) -> str | None:
    """Streaming is refused on every endpoint: the answer is stored whole, never as raw server-sent events."""
    if body.get("stream") in (None, False):
        return None
    return "body.stream: not supported (answers are stored whole, never as streamed chunks); remove it"


def check_audio_params(url: str, body: dict[str, Any]) -> str | None:
    """The parameters of an audio body other than `file`."""
    problem = _check_string(body, "model")
    if problem:
        return problem
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, str) and fmt in AUDIO_RESPONSE_FORMATS):
        return f"body.response_format: must be one of {_one_of(AUDIO_RESPONSE_FORMATS)}, got {fmt!r}"
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and not isinstance(temperature, bool) and 0 <= temperature <= 1
    ):
        return f"body.temperature: must be a number from 0 to 1, got {temperature!r}"
    for key in ("prompt", "language"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            return f"body.{key}: must be a string, got {json_type(value)}"
    if "language" in body and url == ENDPOINTS["translations"].url:
        return "body.language: not accepted by translations"
    return None


def check_audio_file(body: dict[str, Any], base_dir: Path, roots: Sequence[Path] = ()) -> Path | str:
    """The audio file named by `body["file"]`, resolved against `base_dir`, or the problem with it. It must
    lie inside `base_dir` or one of `roots` once symlinks are resolved (`jobs/paths.py`).

    Only stats the file and reads its first bytes (is it the format its extension claims?): a 25 MB upload
    is read by whoever stores it, not by validation.
    """
    if "file" not in body:
        return "body.file: required"
    name = body["file"]
    if not isinstance(name, str):
        return f"body.file: must be a string path, got {json_type(name)}"
    if not name:
        return "body.file: must not be empty"
    path = base_dir / name  # an absolute `name` replaces base_dir
    outside = audio_outside(path, name, base_dir, roots)  # before any stat: says nothing of what is there
    if outside is not None:
        return outside
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"body.file: no such file {name!r}"
    except OSError as exc:
        return f"body.file: cannot read {name!r}: {exc.strerror}"
    head = _read_head(path, name, info.st_mode)
    if isinstance(head, str):
        return head
    extension = path.suffix[1:].lower()
    if extension not in AUDIO_EXTENSIONS:
        found = f"audio format {path.suffix!r}" if path.suffix else "file without an extension"
        return f"body.file: unsupported {found} (expected one of {_one_of(AUDIO_EXTENSIONS)})"
    if info.st_size > MAX_AUDIO_BYTES:
        # rounded up, so a file just over the limit never reads "25.0 MB is over the 25 MB limit"
        size = math.ceil(info.st_size * 10 / 2**20) / 10
        return f"body.file: {size:.1f} MB is over the {MAX_AUDIO_BYTES // 2**20} MB limit"
    if not head:
        return f"body.file: {name!r} is empty"
    if not audio_format_matches(extension, head):
        claimed, signature = AUDIO_SIGNATURES[extension]
        return f"body.file: {name!r} is not {claimed} (expected {signature})"
    return path


def _read_head(path: Path, name: str, mode: int) -> bytes | str:
    """The file's first bytes, read once, since permission bits say nothing when running as root."""
    if stat.S_ISDIR(mode):
        return f"body.file: cannot read {name!r}: Is a directory"
    if not stat.S_ISREG(mode):
        # never open a FIFO or device: that could block forever
        return f"body.file: cannot read {name!r}: not a regular file"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, AUDIO_HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"body.file: cannot read {name!r}: {exc.strerror}"


#: body check for each non-audio url
BODY_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    ENDPOINTS["chat"].url: check_chat,
    ENDPOINTS["completions"].url: check_completions,
}
