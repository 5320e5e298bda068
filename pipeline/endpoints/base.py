"""What every endpoint answers, in one place: the `Endpoint` base and `Parsed`, what a 2xx answer becomes.

An endpoint object is stateless and shared: the reader validates a line with it, the engine sends and parses
with it, the Batch API planner cuts parts with it, `estimate` and the exports read stored rows with it. Each
question has a default that fits most endpoints; an endpoint overrides what differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

#: A request body, parsed (a JSON object).
Body = dict[str, Any]


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class Parsed:
    """What the database keeps of a 2xx answer next to (or instead of) its raw body."""

    response_id: str | None = None
    model: str | None = None
    finish_reasons: str | None = None  #: every choice's, in order, joined with |
    #: the first choice's text (or its function/tool call as JSON), the transcript, the response's text
    output: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    audio_seconds: float | None = None
    cached_tokens: int | None = None  #: prompt tokens served from the prompt cache
    reasoning_tokens: int | None = None  #: completion tokens spent reasoning (part of completion_tokens)
    flagged: bool | None = None  #: a moderation: whether any input was flagged
    dimensions: int | None = None  #: embeddings: each vector's length
    vectors: bytes | None = None  #: embeddings: every vector as float32 little-endian, in `data` order
    #: the body to store instead of the raw answer (embeddings: without the vectors, kept in `vectors`)
    body: bytes | None = None


class Tokens(NamedTuple):
    """What a `usage` object counts; None where it says nothing."""

    prompt: int | None
    completion: int | None
    total: int | None
    cached: int | None
    reasoning: int | None


@dataclass(frozen=True)
class Endpoint(ABC):
    """One API endpoint a job line can target. Subclasses override what differs from the defaults."""

    #: the `--endpoint` shorthand name
    name: str
    #: the Batch API line's `url`, e.g. "/v1/chat/completions"
    url: str
    #: `url` without its "/v1": what is appended to the base URL (which ends in /v1)
    path: str = field(init=False)

    #: the body names a file to upload, and is sent as multipart/form-data (else as JSON)
    multipart: ClassVar[bool] = False
    #: the OpenAI Batch API takes its requests
    batch_api: ClassVar[bool] = True
    #: answers carry completion tokens: a request without a cap reserves the learned (or default) length
    completes: ClassVar[bool] = True
    #: the API charges nothing for it, whatever the model (it is still rate limited)
    free: ClassVar[bool] = False
    #: most inputs (`batch_inputs`) one Batch API batch may hold over all its lines; None: no such limit
    max_batch_inputs: ClassVar[int | None] = None
    #: how Azure OpenAI's deployments API serves it: under a deployment (`/openai/deployments/{name}`+path),
    #: by the resource with the deployment named in `model` (`/openai`+path), or not at all ("none")
    azure: ClassVar[str] = "deployment"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", self.url.removeprefix("/v1"))

    # --- a job line ------------------------------------------------------------------------------------

    @abstractmethod
    def validate(self, body: Body, base_dir: Path) -> str | None:
        """The first problem that would make the request fail for certain (`"body.x: ..."`), or None.

        Only that is checked: every other parameter passes through untouched. `base_dir` is where files
        the body names are looked up (the job file's folder).
        """

    def upload(self, body: Body, base_dir: Path) -> Path | None:
        """The file a valid body names, to be stored and sent with it (None: nothing to upload)."""
        return None

    def model_of(self, body: Body) -> str:
        """The model the request is for: its rate-limit key, its price, its Batch API part."""
        return str(body.get("model"))

    # --- tokens, for the rate limiter and `estimate` ---------------------------------------------------

    def prompt_texts(self, body: Body) -> list[str]:
        """The texts the API counts as prompt, each counted on its own with the model's encoding."""
        return []

    def prompt_overhead(self, body: Body) -> int:
        """Prompt tokens beside those texts (framing, token ids given as numbers)."""
        return 0

    def messages(self, body: Body) -> int:
        """Chat-style messages, whose framing `estimate` counts approximately."""
        return 0

    def completion_cap(self, body: Body) -> int | None:
        """Completion tokens the API counts against the TPM limit when the request arrives, when the body
        says (max_tokens x n); None when only the answer will tell."""
        return None

    def choices(self, body: Body) -> int:
        """Answers one request asks for (`n`)."""
        return 1

    # --- answers -------------------------------------------------------------------------------------

    def plain_text(self, body: Body) -> bool:
        """Whether the answer to this body comes as plain text rather than a JSON object."""
        return False

    @abstractmethod
    def parse(self, data: dict[str, Any]) -> Parsed | str:
        """A 2xx answer's JSON object, parsed; or what it lacks to be this endpoint's answer."""

    def parse_text(self, text: str) -> Parsed:
        """A plain-text answer (see `plain_text`)."""
        return Parsed(output=text)

    # --- the Batch API ---------------------------------------------------------------------------------

    def batch_inputs(self, body: Body) -> int:
        """What the request counts against `max_batch_inputs`."""
        return 1

    # --- exports -------------------------------------------------------------------------------------

    def restore(self, body: Any, vectors: bytes | None, dimensions: int | None) -> Any:
        """A stored answer's body (parsed) as the API sent it: what was kept apart put back."""
        return body

    def export_fields(
        self, body: Any, vectors: bytes | None, dimensions: int | None, flagged: bool | None
    ) -> dict[str, Any]:
        """Keys the `jsonl` export adds to this endpoint's records, from the stored answer."""
        return {}


def lacks(data: Mapping[str, Any], what: str) -> str:
    """Why `data` is not an answer: an error object sent with a 2xx, or it lacks `what`."""
    return "an error object" if data.get("error") else f"no `{what}`"


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def usage_tokens(usage: Mapping[str, Any]) -> Tokens:
    """The one reading of a `usage` object, the Responses API's and token-billed audio's names
    (`input_tokens`, `output_tokens` and their details) included."""
    details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
    details = usage.get("completion_tokens_details", usage.get("output_tokens_details"))
    reasoning = as_int(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    return Tokens(
        as_int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        as_int(usage.get("completion_tokens", usage.get("output_tokens"))),
        as_int(usage.get("total_tokens")),
        cached,
        reasoning,
    )
