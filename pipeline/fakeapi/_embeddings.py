"""POST /v1/embeddings: validation as OpenAI answers it, and deterministic vectors.

Each input's vector is drawn from a seed made of the model, the dimensions and the input itself, so the
same input always gets the same vector and a test can compute it (`vector_of`). Its values are float32
with magnitudes in [1/32, 1/8) and random signs; they are sent as JSON floats (each float32 printed as the
double it is, as OpenAI prints them) or, with `encoding_format: base64`, as base64 of the little-endian
float32 bytes, as OpenAI sends them.

Refused, in this order, with OpenAI's words where they are known: a missing or non-string model; a missing
or malformed `input` (an empty string, an empty array, mixed items: "'$.input' is invalid"); more than
2,048 inputs (array_above_max_length); an input over 8,192 tokens ("This model's maximum context length
is 8192 tokens, ..."); more than 300,000 tokens in all (max_tokens_per_request); `dimensions` below 1, for
a model that takes none (text-embedding-ada-002: "This model does not support specifying dimensions.") or
over the model's size; an `encoding_format` other than float or base64; `stream`; an unknown model.
Tokens are counted as the fake counts them (`count_tokens`: ceil(characters / 4)), token-id inputs by
their length; usage is `{"prompt_tokens": n, "total_tokens": n}` and the TPM estimate is n.

The first input, when it is a string, may carry a directive (_directives.py); embeddings have no text, so
a directive with `content` or `pad` is refused 400.
"""

from __future__ import annotations

import base64
import hashlib
import random
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import orjson

from ._chat import load_object, model_of
from ._directives import Directive, directive_in, invalid_directive
from ._plan import Plan
from ._protocol import (
    Answer,
    ApiError,
    check_model_exists,
    count_tokens,
    fingerprint_bytes,
    int_param,
    missing_parameter,
    reject_stream,
    require_model,
)

#: Each model's vector size; a model not named here answers DEFAULT_DIMENSIONS.
NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_DIMENSIONS = 1536
#: Models that refuse `dimensions`.
FIXED = frozenset({"text-embedding-ada-002"})
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000
ENCODING_FORMATS = ("float", "base64")

#: Each float's top byte (little-endian: its last): the sign kept, the exponent's high bits set so that
#: |value| is in [2**-5, 2**-3) whatever the low exponent bit and the mantissa are.
_TOP_BYTE = bytes((byte & 0x80) | 0x3D for byte in range(256))
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)


def vector_of(model: str, dimensions: int, item: str | list[int]) -> bytes:
    """The vector the fake answers for one input: `dimensions` little-endian float32s."""
    seed = hashlib.sha256(orjson.dumps([model, dimensions, item])).digest()
    data = bytearray(random.Random(seed).randbytes(4 * dimensions))
    data[3::4] = data[3::4].translate(_TOP_BYTE)
    return bytes(data)


def floats_of(vector: bytes) -> list[float]:
    """A vector's float32s as Python floats."""
    values = array("f")
    values.frombytes(vector)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def plan_embeddings(raw: bytes, models: Sequence[str] | None) -> Plan:
    fingerprint = fingerprint_bytes(raw)
    try:
        body = load_object(raw)
        model = require_model(body.get("model"))
        items = _read_inputs(body.get("input"))
        tokens = _count(items)
        dimensions = _dimensions(body, model)
        encoding = _encoding(body.get("encoding_format"))
        reject_stream(body)
        directive = _directive_in(items[0])
        check_model_exists(model, models)
    except ApiError as error:
        return Plan.failing(fingerprint, error, model_of(raw))

    def respond(directed: Directive | None) -> Answer:
        named = directed.model if directed is not None and directed.model is not None else model
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encoded(vector_of(model, dimensions, item), encoding),
            }
            for i, item in enumerate(items)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return Answer.json({"object": "list", "data": data, "model": named, "usage": usage})

    return Plan(fingerprint, model, tokens, respond, directive=directive)


def _read_inputs(value: Any) -> list[str | list[int]]:
    if value is None:
        raise missing_parameter("input")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise ApiError(400, _INVALID_INPUT, param="input")
    strings = all(isinstance(item, str) and item for item in items)
    token_lists = all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in items)
    if not (strings or token_lists):
        raise ApiError(400, _INVALID_INPUT, param="input")
    if len(items) > MAX_INPUTS:
        raise ApiError(
            400,
            f"Invalid 'input': array too long. Expected an array with maximum length {MAX_INPUTS}, but got "
            f"an array with length {len(items)} instead.",
            param="input",
            code="array_above_max_length",
        )
    return items


def _count(items: list[str | list[int]]) -> int:
    total = 0
    for item in items:
        tokens = len(item) if isinstance(item, list) else count_tokens(item)
        if tokens > MAX_INPUT_TOKENS:
            raise ApiError(
                400,
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). Please reduce "
                "your prompt; or completion length.",
            )
        total += tokens
    if total > MAX_REQUEST_TOKENS:
        raise ApiError(
            400,
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            param="input",
            code="max_tokens_per_request",
        )
    return total


def _dimensions(body: dict[str, Any], model: str) -> int:
    native = NATIVE_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    asked = int_param(body, "dimensions", low=1)
    if asked is None:
        return native
    if model in FIXED:
        raise ApiError(400, "This model does not support specifying dimensions.")
    if asked > native:
        return int_param({"dimensions": asked}, "dimensions", low=1, high=native) or native
    return asked


def _encoding(value: Any) -> str:
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        raise ApiError(
            400,
            f"{value!r} is not one of {list(ENCODING_FORMATS)} - 'encoding_format'",
            param="encoding_format",
        )
    return str(value)


def _encoded(vector: bytes, encoding: str) -> Any:
    return base64.b64encode(vector).decode() if encoding == "base64" else floats_of(vector)


def _directive_in(first: str | list[int]) -> Directive | None:
    directive = directive_in(first)
    if directive is not None and directive.shapes_text:
        raise invalid_directive("'content' and 'pad' do not apply to embeddings, which have no text")
    return directive


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_inputs(value: Any) -> int:
    """How many vectors an `input` asks for (0 for one that is malformed)."""
    try:
        return len(_read_inputs(value))
    except ApiError:
        return 0
