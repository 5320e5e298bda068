"""FakeConfig: the knobs of the fake API, and their live update from JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Field name -> (python type accepted, None allowed). bool is refused even where int is accepted.
_FIELD_TYPES: dict[str, tuple[type, bool]] = {
    "api_key": (str, True),
    "latency": (float, False),
    "latency_jitter": (float, False),
    "error_rate": (float, False),
    "hang_rate": (float, False),
    "hang_seconds": (float, False),
    "error_status": (int, True),
    "retry_after": (float, True),
    "rpm": (int, True),
    "tpm": (int, True),
    "window": (float, False),
    "quota": (int, True),
    "seed": (int, True),
    "models": (list, True),
    "batch_seconds": (float, False),
    "batch_expire_rate": (float, False),
    "batch_token_limit": (int, True),
    "batch_max_lines": (int, False),
    "batch_max_inputs": (int, False),
    "batch_max_bytes": (int, False),
    "batch_delays": (dict, True),
    "quote_key": (bool, False),
    "keys": (dict, True),
    "azure": (bool, False),
    "deployments": (list, True),
    "api_versions": (list, True),
    "capacity": (int, True),
    "queue_limit": (int, True),
}

#: The Batch API operations `batch_delays` may slow down (files, then batches).
BATCH_OPERATIONS = (
    "upload",
    "list_files",
    "retrieve_file",
    "file_content",
    "delete_file",
    "create",
    "list",
    "retrieve",
    "cancel",
)


@dataclass
class FakeConfig:
    """How the fake behaves. Mutable: tests and `POST /_fake/config` change it while it serves."""

    #: When set, any other Bearer key gets 401 invalid_api_key. Kept out of repr.
    api_key: str | None = field(default=None, repr=False)
    #: Seconds added to every successful answer.
    latency: float = 0.0
    #: Uniform +- jitter on latency (the sum never goes below zero).
    latency_jitter: float = 0.0
    #: Fraction of requests answered 500/502/503 with an OpenAI error body.
    error_rate: float = 0.0
    #: The status of injected server errors; None: 500, 502 or 503 at random.
    error_status: int | None = None
    #: Seconds sent as Retry-After with injected server errors (as llmock sends 1 with its 503s); None: none.
    retry_after: float | None = None
    #: Fraction of requests that sleep `hang_seconds` before being handled (until the client gives up).
    hang_rate: float = 0.0
    #: How long a hanging request sleeps; after that it is handled normally.
    hang_seconds: float = 3600.0
    #: Requests per minute, enforced as rpm * window / 60 per bucket of `window` seconds.
    rpm: int | None = None
    #: Tokens per minute, enforced in the same buckets.
    tpm: int | None = None
    #: Bucket length in seconds.
    window: float = 1.0
    #: Successful answers allowed (since start or reset); then every call gets 429 insufficient_quota.
    quota: int | None = None
    #: Seed for the random choices (faults, jitter); read at start and on `POST /_fake/config`.
    seed: int | None = None
    #: Models that exist; a request naming any other gets 404 model_not_found. None: every model exists
    #: but "does-not-exist".
    models: list[str] | None = None
    #: Seconds a Batch API batch stays in_progress before its lines are answered (its processing time).
    batch_seconds: float = 0.0
    #: Share of a batch's lines that expire instead of being answered (`batch_expired` in the error file).
    batch_expire_rate: float = 0.0
    #: Enqueued tokens allowed per model over the batches in progress; a batch that would pass it fails
    #: with `token_limit_exceeded`. None: no limit.
    batch_token_limit: int | None = None
    #: Lines one batch input file may hold; more fails the batch's validation.
    batch_max_lines: int = 50_000
    #: Embedding inputs one /v1/embeddings batch may hold over all its lines; more fails its validation.
    batch_max_inputs: int = 50_000
    #: Bytes one batch input file may hold; a larger one is refused 400 when the batch is created.
    batch_max_bytes: int = 200 * 1024 * 1024
    #: Seconds the fake waits before answering a Batch API operation (BATCH_OPERATIONS), after doing it:
    #: a client killed meanwhile never learns what it made. None: no waits.
    batch_delays: dict[str, float] | None = None
    #: Every /v1 error answer quotes the key the request carried, whole and masked, as some servers do
    #: (OpenAI quotes a masked form in its 401): for tests that the key never reaches storage or logs.
    quote_key: bool = False
    #: Several keys, each with limits of its own: {key: {"name", "rpm", "tpm", "revoked"}} (_accounts.py).
    #: Set, only these keys are accepted and `api_key`, `rpm` and `tpm` are not used. Kept out of repr.
    keys: dict[str, dict[str, Any]] | None = field(default=None, repr=False)
    #: Serve Azure OpenAI's routes (deployments and v1), its `api-key` header, error bodies and headers.
    azure: bool = False
    #: Azure deployments that exist; None: every name but "does-not-exist".
    deployments: list[str] | None = None
    #: Azure api-versions served on the deployment routes; None: any.
    api_versions: list[str] | None = None
    #: A server whose latency rises with load: answers take latency x max(1, in flight / capacity).
    capacity: int | None = None
    #: With more than this many requests in flight, a new one gets 503 at once (a full queue).
    queue_limit: int | None = None

    def __post_init__(self) -> None:
        check_config(self)


def check_config(config: FakeConfig) -> None:
    """Raise ValueError when a field holds a value the fake cannot work with."""
    for name in ("latency", "latency_jitter", "hang_seconds"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    for name in ("error_rate", "hang_rate"):
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
    for name in ("rpm", "tpm"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or null")
    if config.error_status is not None and not 500 <= config.error_status <= 599:
        raise ValueError("error_status must be a 5xx status or null")
    if config.retry_after is not None and config.retry_after < 0:
        raise ValueError("retry_after must be >= 0 or null")
    if config.quota is not None and config.quota < 0:
        raise ValueError("quota must be >= 0 or null")
    if config.window <= 0:
        raise ValueError("window must be > 0")
    _check_accounts(config)
    models = config.models
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise ValueError("models must be a list of strings or null")
    _check_batch_config(config)


def _check_accounts(config: FakeConfig) -> None:
    """Keys, Azure deployments and the load model (_accounts.py)."""
    for name in ("capacity", "queue_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or null")
    deployments = config.deployments
    if deployments is not None and not all(isinstance(d, str) for d in deployments):
        raise ValueError("deployments must be a list of strings or null")
    keys = config.keys
    if keys is None:
        return
    for spec in keys.values():
        if not isinstance(spec, dict) or not set(spec) <= {"name", "rpm", "tpm", "revoked"}:
            raise ValueError('keys must map each key to {"name", "rpm", "tpm", "revoked"}')
        for name in ("rpm", "tpm"):
            value = spec.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"keys: {name} must be an integer >= 1 or null")


def _check_batch_config(config: FakeConfig) -> None:
    if config.batch_seconds < 0:
        raise ValueError("batch_seconds must be >= 0")
    if not 0 <= config.batch_expire_rate <= 1:
        raise ValueError("batch_expire_rate must be between 0 and 1")
    for name in ("batch_max_lines", "batch_max_inputs", "batch_max_bytes"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    if config.batch_token_limit is not None and config.batch_token_limit < 1:
        raise ValueError("batch_token_limit must be >= 1 or null")
    delays = config.batch_delays
    if delays is None:
        return
    if not isinstance(delays, dict) or not set(delays) <= set(BATCH_OPERATIONS):
        raise ValueError(f"batch_delays must map operations ({', '.join(BATCH_OPERATIONS)}) to seconds")
    for value in delays.values():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError("batch_delays values must be numbers of seconds >= 0")


def update_config(config: FakeConfig, changes: dict[str, Any]) -> None:
    """Apply `changes` to `config`, all or nothing: unknown keys or bad values raise ValueError."""
    unknown = sorted(set(changes) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    for name, value in changes.items():
        _check_type(name, value)
    candidate = dataclasses.replace(config, **changes)  # runs __post_init__, so check_config
    for name in changes:
        setattr(config, name, getattr(candidate, name))


def config_view(config: FakeConfig) -> dict[str, Any]:
    """The config as JSON-ready data, the API key masked."""
    view = dataclasses.asdict(config)
    if config.api_key is not None:
        view["api_key"] = "****"
    if config.keys is not None:
        view["keys"] = {f"key-{i}": dict(spec) for i, spec in enumerate(config.keys.values())}
    return view


def _check_type(name: str, value: Any) -> None:
    kind, nullable = _FIELD_TYPES[name]
    if value is None:
        if not nullable:
            raise ValueError(f"{name} cannot be null")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be of type bool")
        return
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
        raise ValueError(f"{name} must be of type {kind.__name__}")
