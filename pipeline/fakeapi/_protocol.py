"""What every endpoint shares: error bodies, the request plan, token counts, durations."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

#: The organization named in rate-limit messages and the openai-organization header.
ORGANIZATION = "org-fake"

#: The model that never exists, to exercise 404 model_not_found.
MISSING_MODEL = "does-not-exist"

NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)

_JSON_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
    type(None): "null",
}


class ApiError(Exception):
    """One OpenAI-shaped error answer: status, the `error` object and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body, exactly as OpenAI nests it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


@dataclass(frozen=True)
class Answer:
    """A successful answer: its body, headers beyond those every answer gets, and the tokens its usage
    reports (prompt, completion), counted in the stats when it is sent."""

    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    tokens: tuple[int, int] | None = None

    @classmethod
    def json(cls, data: Any) -> Answer:
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = None
        if isinstance(usage, dict) and usage.get("type") != "duration":
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
            tokens = (int(prompt or 0), int(completion or 0))
        return cls(orjson.dumps(data), tokens=tokens)


def fingerprint_bytes(raw: bytes) -> str:
    """The fingerprint of a JSON request: sha256 hex of its raw body bytes."""
    return hashlib.sha256(raw).hexdigest()


def count_tokens(text: str) -> int:
    """The fake's token count: one token per started four characters."""
    return math.ceil(len(text) / 4)


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration at millisecond precision, rounded up: 20ms, 1.5s, 6m0s, 1h23m31s."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def mask_key(key: str) -> str:
    """Mask an API key the way OpenAI echoes it: sk-ab****wxyz. Short keys are masked whole."""
    if len(key) < 12:
        return "*" * len(key)
    return f"{key[:5]}****{key[-4:]}"


def unparsable_json() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
        "JSON. If you have trouble figuring out how to fix this, please contact us through our help center "
        "at help.openai.com.)",
    )


def missing_parameter(param: str) -> ApiError:
    return ApiError(
        400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def invalid_type(param: str, expected: str, value: Any) -> ApiError:
    got = _JSON_NAMES.get(type(value), "an unknown type")
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param=None,
        code="model_not_found",
    )


def require_model(value: Any) -> str:
    """The `model` parameter, or the error OpenAI gives when it is absent or not a string."""
    if value is None or value == "":
        raise missing_parameter("model")
    if not isinstance(value, str):
        raise invalid_type("model", "a string", value)
    return value


def check_model_exists(model: str, models: Sequence[str] | None) -> None:
    """404 model_not_found for MISSING_MODEL, and for any model outside `models` when that is set."""
    if model == MISSING_MODEL or (models is not None and model not in models):
        raise model_not_found(model)


def int_param(body: Mapping[str, Any], name: str, *, low: int, high: int | None = None) -> int | None:
    """An optional integer parameter within [low, high], or None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(name, "an integer", value)
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        raise ApiError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def reject_stream(body: Mapping[str, Any]) -> None:
    """Streaming is not faked: say so rather than answer a streaming client with one JSON body."""
    if body.get("stream"):
        raise ApiError(400, "The fake API does not support stream=true.", param="stream")
