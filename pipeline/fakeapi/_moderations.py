"""POST /v1/moderations: one result per input, flagged by keywords, scores drawn from the text.

`input` is a string, an array of strings (one result each), or an array of content parts (`text`,
`image_url`: one result for them all); `model` defaults to omni-moderation-latest. A category is flagged
when the input holds one of its KEYWORDS (score 0.9 and up); every other score is below 0.01, drawn from
the sha256 of the text, so the same input always gets the same result. `category_applied_input_types`
names "text", and "image" too for the categories images are scored on when an image part is given.

Refused: a missing or malformed input ("'$.input' is invalid"), a model that is not a string, `stream`,
an unknown model. The API reports no usage (moderations are free); the TPM estimate is the text's tokens
(ceil(characters / 4)). A string input, or the first of a list, may carry a directive (_directives.py);
moderations have no text to set, so `content` and `pad` are refused.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from ._chat import load_object, model_of
from ._directives import Directive, directive_in, invalid_directive
from ._plan import Plan
from ._protocol import (
    Answer,
    ApiError,
    check_model_exists,
    count_tokens,
    fingerprint_bytes,
    invalid_type,
    missing_parameter,
    reject_stream,
)

DEFAULT_MODEL = "omni-moderation-latest"
#: The categories of omni-moderation, in the API's order.
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: Words that flag a category (lower case, found anywhere in the text).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "harassment": ("idiot", "loser"),
    "hate": ("hateful",),
    "illicit": ("steal", "shoplift"),
    "self-harm": ("hurt myself",),
    "sexual": ("explicit",),
    "violence": ("kill", "attack"),
}
#: Categories images are scored on.
IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence"}
)
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)


def plan_moderations(raw: bytes, models: Sequence[str] | None) -> Plan:
    fingerprint = fingerprint_bytes(raw)
    try:
        body = load_object(raw)
        model = _model(body.get("model"))
        inputs, images = _read_inputs(body.get("input"))
        reject_stream(body)
        directive = _directive_in(inputs[0] if inputs else None)
        check_model_exists(model, models)
    except ApiError as error:
        return Plan.failing(fingerprint, error, model_of(raw) or DEFAULT_MODEL)
    tokens = sum(count_tokens(text) for text in inputs)

    def respond(directed: Directive | None) -> Answer:
        named = directed.model if directed is not None and directed.model is not None else model
        results = [_result(text, images) for text in inputs]
        return Answer.json({"id": f"modr-{secrets.token_hex(16)}", "model": named, "results": results})

    return Plan(fingerprint, model, tokens, respond, directive=directive)


def _model(value: Any) -> str:
    if value is None:
        return DEFAULT_MODEL
    if not isinstance(value, str) or not value:
        raise invalid_type("model", "a string", value)
    return value


def _read_inputs(value: Any) -> tuple[list[str], bool]:
    """The texts to moderate (one result each), and whether an image was given."""
    if value is None:
        raise missing_parameter("input")
    if isinstance(value, str):
        return [value], False
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value), False
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        texts = [str(part.get("text", "")) for part in value if part.get("type") == "text"]
        images = any(part.get("type") == "image_url" for part in value)
        if len(texts) + images == len(value):
            return ["\n".join(texts)], images
    raise ApiError(400, _INVALID_INPUT, param="input")


def _directive_in(text: str | None) -> Directive | None:
    directive = directive_in(text)
    if directive is not None and directive.shapes_text:
        raise invalid_directive("'content' and 'pad' do not apply to moderations, which have no text")
    return directive


def _result(text: str, image: bool) -> dict[str, Any]:
    lower = text.lower()
    seed = hashlib.sha256(text.encode()).digest()
    scores: dict[str, float] = {}
    for i, name in enumerate(CATEGORIES):
        hit = any(word in lower for word in KEYWORDS.get(name, ()))
        scores[name] = (0.9 if hit else 0.0) + seed[i] / 25600  # < 0.01 without a keyword
    categories = {name: score >= 0.5 for name, score in scores.items()}
    applied = {
        name: ["text", "image"] if image and name in IMAGE_CATEGORIES else ["text"] for name in CATEGORIES
    }
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }
