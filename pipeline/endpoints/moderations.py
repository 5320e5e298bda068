"""POST /v1/moderations: is a text (or an image) harmful? Free, but rate limited like any endpoint.

`input` is a string, a list of strings, or a list of content parts (`{"type": "text", "text"}`,
`{"type": "image_url", "image_url": {"url"}}`); `model` is optional (the API's default,
omni-moderation-latest, is the rate-limit key and the Batch API part's model when it is left out).
The answer (platform.openai.com/docs/api-reference/moderations/object) has one result per input, each with
`flagged`, `categories` and `category_scores`; the whole answer is stored, `results.flagged` says whether
any result was flagged, and `output` lists the flagged categories, joined with `|`. The API reports no
usage: nothing is charged, and the rate limiter keeps what it reserved for the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pipeline.endpoints.base import Body, Endpoint, Parsed, as_str, lacks
from pipeline.endpoints.checks import check_stream, json_type

#: The model the API uses when the body names none.
DEFAULT_MODEL = "omni-moderation-latest"

_INPUT_TYPES = "a string, a list of strings or a list of content parts"


class Moderations(Endpoint):
    """Moderations: flagged or not, per category."""

    #: Azure OpenAI has no moderations endpoint (its content filter runs on every request)
    azure: ClassVar[str] = "none"

    completes = False
    free = True

    def validate(self, body: Body, base_dir: Path) -> str | None:
        model = body.get("model")
        if model is not None and not (isinstance(model, str) and model):
            return f"body.model: must be a non-empty string, got {model!r}"
        return _check_input(body) or check_stream(body)

    def model_of(self, body: Body) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else DEFAULT_MODEL

    def prompt_texts(self, body: Body) -> list[str]:
        value = body.get("input")
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            return []
        return [item if isinstance(item, str) else str(item.get("text") or "") for item in value]

    def completion_cap(self, body: Body) -> int | None:
        return 0

    def parse(self, data: dict[str, Any]) -> Parsed | str:
        results = data.get("results")
        if not (isinstance(results, list) and results and all(isinstance(r, dict) for r in results)):
            return lacks(data, "results")
        if not all(isinstance(r.get("flagged"), bool) for r in results):
            return "a result without `flagged`"
        flagged = sorted(
            {
                name
                for result in results
                if isinstance(result.get("categories"), dict)
                for name, on in result["categories"].items()
                if on is True
            }
        )
        return Parsed(
            response_id=as_str(data.get("id")),
            model=as_str(data.get("model")),
            output="|".join(flagged),
            flagged=any(result["flagged"] for result in results),
        )

    def export_fields(
        self, body: Any, stored: bytes | None, dimensions: int | None, flagged: bool | None
    ) -> dict[str, Any]:
        """`flagged`: whether any input was flagged."""
        return {"flagged": flagged}


def _check_input(body: Body) -> str | None:
    if "input" not in body:
        return "body.input: required"
    value = body["input"]
    if isinstance(value, str):
        return None
    if not isinstance(value, list):
        return f"body.input: must be {_INPUT_TYPES}, got {json_type(value)}"
    if not value:
        return "body.input: must not be empty"
    if isinstance(value[0], str):
        ok = all(isinstance(item, str) for item in value)
    else:
        ok = all(isinstance(item, dict) and isinstance(item.get("type"), str) for item in value)
    return None if ok else f"body.input: must be {_INPUT_TYPES}"
