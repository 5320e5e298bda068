"""POST /v1/embeddings: inputs in, one vector per input out, stored once as float32 (vectors.py).

Validation is the API's (platform.openai.com/docs/api-reference/embeddings/create): `input` is a non-empty
string, or a non-empty array of at most 2,048 strings, token ids or token-id arrays (never mixed, no empty
string); each input at most 8,192 tokens and all of them at most 300,000; `dimensions` only for the models
that take it (the text-embedding-3 family: text-embedding-ada-002 answers 400 "This model does not support
specifying dimensions."); `encoding_format` float or base64. Every other parameter passes through.

Tokens: the prompt is counted exactly (each string input with the model's encoding, token-id inputs by
their length); an embedding has no completion, so the rate limiter is settled with the prompt alone.

Answers: `data[i].embedding` is a list of floats, or base64 of little-endian float32 with
`encoding_format: base64`. The vectors go to `results.vectors` (float32, in `data` order, `dimensions`
each) and the stored body keeps every item with its `embedding` emptied: `[]` where the API sent floats,
`""` where it sent base64, so the export puts back exactly what came (`restore`).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import orjson

from pipeline.endpoints import vectors
from pipeline.endpoints.base import Body, Endpoint, Parsed, as_str, lacks, usage_tokens
from pipeline.endpoints.checks import check_stream, check_string, is_int, json_type, one_of
from pipeline.send.tokens import count_tokens

#: Inputs one request may hold.
MAX_INPUTS = 2048
#: Tokens one input may hold.
MAX_INPUT_TOKENS = 8192
#: Tokens all the inputs of one request may hold together.
MAX_REQUEST_TOKENS = 300_000
#: Inputs one Batch API batch may hold, over all its lines.
MAX_BATCH_INPUTS = 50_000
#: Values of `encoding_format`.
ENCODING_FORMATS: frozenset[str] = frozenset({"float", "base64"})
#: The models that take `dimensions`, and their full size (the most it may ask for).
SHORTENED: dict[str, int] = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
#: The models known to refuse `dimensions`.
FIXED: frozenset[str] = frozenset({"text-embedding-ada-002"})

_INPUT_TYPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


class Embeddings(Endpoint):
    """Embeddings: one vector per input."""

    completes = False
    max_batch_inputs = MAX_BATCH_INPUTS

    def validate(self, body: Body, base_dir: Path) -> str | None:
        return (
            check_string(body, "model")
            or _check_input(body)
            or _check_dimensions(body)
            or _check_format(body)
            or check_stream(body)
        )

    def prompt_texts(self, body: Body) -> list[str]:
        return [item for item in inputs(body.get("input")) if isinstance(item, str)]

    def prompt_overhead(self, body: Body) -> int:
        return sum(len(item) for item in inputs(body.get("input")) if isinstance(item, list))

    def completion_cap(self, body: Body) -> int | None:
        return 0  # no completion: the API counts the prompt alone

    def batch_inputs(self, body: Body) -> int:
        return len(inputs(body.get("input")))

    def parse(self, data: dict[str, Any]) -> Parsed | str:
        items = data.get("data")
        if not (isinstance(items, list) and items and all(isinstance(item, dict) for item in items)):
            return lacks(data, "data")
        order = [item.get("index") for item in items]
        if all(is_int(i) for i in order) and order != sorted(order):
            # kept in input order, so every export (and Parquet's column of vectors) lists them so
            items = data["data"] = sorted(items, key=lambda item: int(item["index"]))
        packed = _take_vectors(items)
        if isinstance(packed, str):
            return packed
        stored, dimensions = packed
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        prompt, completion, total, cached, _ = usage_tokens(usage)
        return Parsed(
            model=as_str(data.get("model")),
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=cached,
            dimensions=dimensions,
            vectors=stored,
            body=orjson.dumps(data),  # the items' embeddings emptied by _take_vectors
        )

    def restore(self, body: Any, stored: bytes | None, dimensions: int | None) -> Any:
        items = body.get("data") if isinstance(body, dict) else None
        if stored is None or dimensions is None or not isinstance(items, list):
            return body
        for item, vector in zip(items, vectors.split(stored, dimensions), strict=False):
            if isinstance(item, dict):
                emptied = item.get("embedding")
                text = isinstance(emptied, str)
                item["embedding"] = base64.b64encode(vector).decode() if text else vectors.unpack(vector)
        return body

    def export_fields(
        self, body: Any, stored: bytes | None, dimensions: int | None, flagged: bool | None
    ) -> dict[str, Any]:
        """`embeddings`: each input's vector as a list of floats, in input order (`index`)."""
        if stored is None or dimensions is None:
            return {"embeddings": None}
        found = vectors.split(stored, dimensions)
        items = body.get("data") if isinstance(body, dict) else None
        order = [item.get("index") if isinstance(item, dict) else None for item in items or []]
        if len(order) == len(found) and all(is_int(i) for i in order):  # in input order
            found = [found[k] for k in sorted(range(len(found)), key=lambda k: int(order[k] or 0))]
        return {"embeddings": [vectors.unpack(vector) for vector in found]}


def inputs(value: Any) -> list[str | list[int]]:
    """The inputs of a (valid) `input`: its strings and token-id lists, each one vector's worth."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return []
    if is_int(value[0]):
        return [value]  # one input given as token ids
    return list(value)


def _check_input(body: Body) -> str | None:
    if "input" not in body:
        return "body.input: required"
    value = body["input"]
    if isinstance(value, str):
        return "body.input: must not be an empty string" if not value else _check_tokens(body, [value])
    if not isinstance(value, list):
        return f"body.input: must be {_INPUT_TYPES}, got {json_type(value)}"
    if not value:
        return "body.input: must not be empty"
    first = value[0]
    if is_int(first):
        ok = all(is_int(item) for item in value)
    elif isinstance(first, str):
        ok = all(isinstance(item, str) for item in value)
    else:
        ok = all(isinstance(item, list) and all(is_int(t) for t in item) for item in value)
    if not ok:
        return f"body.input: must be {_INPUT_TYPES}"
    found = inputs(value)
    if len(found) > MAX_INPUTS:
        return f"body.input: {len(found):,} inputs, over the limit of {MAX_INPUTS:,} per request"
    for index, item in enumerate(found):
        if not item:
            return f"body.input[{index}]: must not be empty"
    return _check_tokens(body, found)


def _check_tokens(body: Body, found: list[str | list[int]]) -> str | None:
    """Each input within MAX_INPUT_TOKENS, all within MAX_REQUEST_TOKENS, counted as the engine counts.

    Texts are tokenized only when their UTF-8 size could exceed a limit: a token holds at least one byte, so
    a text's size in bytes bounds its tokens.
    """
    value = body["input"]
    single = isinstance(value, str) or is_int(value[0])  # one input, a text or token ids
    model, total = str(body.get("model")), 0
    for index, item in enumerate(found):
        size = len(item) if isinstance(item, list) else len(item.encode())
        tokens = size if isinstance(item, list) or size <= MAX_INPUT_TOKENS else count_tokens(item, model)
        if tokens > MAX_INPUT_TOKENS:
            where = "body.input" if single else f"body.input[{index}]"
            return f"{where}: {tokens:,} tokens, over the limit of {MAX_INPUT_TOKENS:,} per input"
        total += tokens
    if total <= MAX_REQUEST_TOKENS:
        return None
    exact = sum(len(i) if isinstance(i, list) else count_tokens(i, model) for i in found)
    if exact <= MAX_REQUEST_TOKENS:
        return None
    return f"body.input: {exact:,} tokens in all, over the limit of {MAX_REQUEST_TOKENS:,} per request"


def _check_dimensions(body: Body) -> str | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if not (is_int(value) and value > 0):
        return f"body.dimensions: must be a positive integer, got {value!r}"
    model = str(body.get("model"))
    if model in FIXED:
        return f"body.dimensions: {model} does not take it (the text-embedding-3 models do)"
    full = SHORTENED.get(model)
    if full is not None and value > full:
        return f"body.dimensions: {value:,} is over {model}'s {full:,}"
    return None


def _check_format(body: Body) -> str | None:
    value = body.get("encoding_format")
    if value is None or (isinstance(value, str) and value in ENCODING_FORMATS):
        return None
    return f"body.encoding_format: must be one of {one_of(ENCODING_FORMATS)}, got {value!r}"


def _take_vectors(items: list[dict[str, Any]]) -> tuple[bytes, int] | str:
    """Every item's vector as float32 bytes, one after another, and their length, each item's `embedding`
    then emptied in place ([] or "" as it came); or what is wrong with them (the items left as they were)."""
    stored: list[bytes] = []
    for item in items:
        embedding = item.get("embedding")
        try:
            if isinstance(embedding, str):
                stored.append(base64.b64decode(embedding, validate=True))
            elif isinstance(embedding, list):
                stored.append(vectors.pack(embedding))
            else:
                return "an item of `data` without an `embedding`"
        except (binascii.Error, TypeError):
            return "an `embedding` that is neither a list of numbers nor base64"
    size = len(stored[0])
    if size % vectors.FLOAT32 or any(len(vector) != size for vector in stored):
        return "embeddings of different lengths"
    for item in items:
        item["embedding"] = "" if isinstance(item["embedding"], str) else []
    return b"".join(stored), size // vectors.FLOAT32
