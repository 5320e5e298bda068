"""One frozen Settings, built once from command-line flags and environment variables, passed explicitly.

Environment: every `PIPELINE_*` variable must be one of ENV_FIELDS (a misspelling is an error, never dropped);
`OPENAI_BASE_URL`, `OPENAI_ORG_ID` and the API key variable (default `OPENAI_API_KEY`) follow OpenAI's names;
`AZURE_OPENAI_ENDPOINT`, `OPENAI_API_VERSION` and `AZURE_OPENAI_API_KEY` the Azure SDK's. Flags win over the
environment, the environment over defaults. The keys of an accounts file (`--accounts`) are read from the
variables it names: every set variable whose name holds KEY or TOKEN is kept as a `Secret` in `secrets`, so a
pool built later (a worker building a batch's pool) reads the environment as it was loaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ConfigError

#: The public API; any OpenAI-compatible base URL works.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


#: What a scrubbed key (or a fragment or masked form of it) becomes.
SCRUBBED = b"***"

#: A masked key as servers quote it: a visible start, mask characters (*, ., bullets, ellipses), a visible
#: end, e.g. OpenAI's `sk-proj-****...abcd` or `sk-ab****wxyz`.
_MASKED = re.compile(rb"([A-Za-z0-9_-]*)((?:\*|\.|\xe2\x80\xa2|\xe2\x80\xa6)+)([A-Za-z0-9_-]*)")
#: A run of key characters long enough to be a telling fragment of a key when the key contains it.
_FRAGMENT = re.compile(rb"[A-Za-z0-9_-]{12,}")


class Secret:
    """A string that never shows itself in repr, str or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, data: bytes) -> bytes:
        """`data` (an answer from the API) without this key: whole, a fragment of 12 characters or more,
        or a masked form showing its start or its last characters (e.g. `sk-proj-****abcd`), each
        replaced by SCRUBBED. Cheap when there is nothing to scrub: two substring searches."""
        key = self._value.encode()
        if len(key) < 8:  # a key this short matches ordinary text; nothing real looks like it
            return data
        if key in data:
            data = data.replace(key, SCRUBBED)
        if key[-4:] not in data and key[:12] not in data:
            return data
        data = _MASKED.sub(lambda m: SCRUBBED if _shows(key, m[1], m[2], m[3]) else m[0], data)
        return _FRAGMENT.sub(lambda m: SCRUBBED if m[0] in key else m[0], data)

    def fingerprint(self) -> str:
        """A short stable hash: names the key in rate-limit state without storing it."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _shows(key: bytes, start: bytes, mask: bytes, end: bytes) -> bool:
    """Whether a masked form shows this key: its last four characters or more after any mask, or its first
    three or more before a mask of at least three characters (`sk-...` alone is not enough)."""
    if len(end) >= 4 and key.endswith(end):
        return True
    return len(start) >= 3 and len(mask) >= 3 and key.startswith(start)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved once."""

    #: local state (the SQLite file, the filesystem broker): see `find_data_dir`
    data_dir: Path = Path(".pipeline")
    #: where data_dir came from, for `pipeline db path`
    data_dir_source: str = field(default="default", compare=False)
    database_url: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    api_key: Secret | None = field(default=None, compare=False)
    organization: str | None = None
    #: sent as OpenAI-Project, and part of the rate-limit key
    project: str | None = None
    max_in_flight: int = 512
    timeout: float = 600.0
    connect_timeout: float = 10.0
    max_attempts: int = 10
    chunk_size: int = 500
    lease_seconds: float = 120.0
    #: largest answer read; a bigger one fails its request (response_too_large) instead of filling memory
    max_response_bytes: int = 32 * 1024 * 1024
    #: seconds a draining engine keeps trying to store what it has before giving up (SIGTERM, Ctrl-C)
    drain_seconds: float = 30.0
    #: seconds the database may refuse writes (a full disk) before sending stops: `pipeline run` exits, a
    #: worker stops claiming until writes work again; the batch pauses if that can still be written
    write_stall_seconds: float = 60.0
    #: the circuit breaker: the batch pauses when at least this many attempts in a row, over at least
    #: breaker_seconds, failed to connect, timed out or got 5xx
    breaker_failures: int = 20
    breaker_seconds: float = 20.0
    rpm: int | None = None
    tpm: int | None = None
    limits_file: Path | None = None
    #: a job-file line longer than this is refused (8 MiB: above any model's context as text)
    max_line_bytes: int = 8 * 1024 * 1024
    #: folders besides the job file's own that its audio files may lie in (symlinks resolved)
    audio_roots: tuple[Path, ...] = ()
    #: Batch API parts: at most this many requests, and bytes of input file, each (the API's own limits)
    part_size: int = 50_000
    part_bytes: int = 200_000_000
    #: longest wait between two polls of one Batch API part (early polls come sooner)
    batch_poll_seconds: float = 60.0
    #: a prices file whose models replace or add to the shipped price table (pipeline/prices.json)
    prices_file: Path | None = None
    #: seconds between two progress lines when stderr is not a terminal (a log file)
    progress_seconds: float = 10.0
    #: serve Prometheus metrics on this port (worker, run); None: not served
    metrics_port: int | None = None
    #: the address metrics are served on: loopback unless another is asked for (they name models and cost)
    metrics_host: str = "127.0.0.1"
    #: Azure OpenAI: the resource's endpoint (https://NAME.openai.azure.com); set, requests go to Azure
    azure_endpoint: str | None = None
    #: Azure's api-version: set, the deployments API; None, Azure's v1 API
    api_version: str | None = None
    #: Azure deployments as NAME=MODEL: a line's model names its deployment, priced as MODEL
    deployments: tuple[str, ...] = ()
    #: a TOML file of accounts ([[account]] tables) to send one batch through (pipeline/accounts.py)
    accounts_file: Path | None = None
    #: the environment's key variables (names holding KEY or TOKEN), for accounts that name them
    secrets: Mapping[str, Secret] = field(default_factory=dict, compare=False, repr=False)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pipeline.db'}"

    def require_api_key(self) -> Secret:
        if self.api_key is None:
            raise ConfigError(
                f"no API key: set {self.api_key_env} (or name another variable with --api-key-env)"
            )
        return self.api_key

    def key_fingerprint(self) -> str:
        return self.api_key.fingerprint() if self.api_key else "nokey"

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build from `environ` (default os.environ) and `overrides` (flags; None values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        unknown = sorted(k for k in env if k.startswith("PIPELINE_") and k not in ENV_FIELDS)
        if unknown:
            raise ConfigError(f"unknown environment variable(s): {', '.join(unknown)}")
        for var, name in ENV_FIELDS.items():
            if env.get(var):
                values[name] = env[var]
        for var, name in OPENAI_ENV.items():
            if env.get(var):
                values.setdefault(name, env[var])
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        source = "PIPELINE_DATA_DIR" if "data_dir" in values else None
        source = "--data-dir" if "data_dir" in flags else source
        values.update(flags)
        if source is None:
            values["data_dir"], source = find_data_dir(Path.cwd())
        settings = replace(cls(**_coerce(values)), data_dir_source=source)
        key = env.get(settings.api_key_env)
        secrets = {name: Secret(value) for name, value in env.items() if value and _SECRET_NAME.search(name)}
        return replace(settings, api_key=Secret(key) if key else None, secrets=secrets)


#: PIPELINE_* variables and the field each sets.
ENV_FIELDS = {
    "PIPELINE_DATA_DIR": "data_dir",
    "PIPELINE_DATABASE_URL": "database_url",
    "PIPELINE_BROKER_URL": "broker_url",
    "PIPELINE_REDIS_URL": "redis_url",
    "PIPELINE_API_KEY_ENV": "api_key_env",
    "PIPELINE_MAX_IN_FLIGHT": "max_in_flight",
    "PIPELINE_TIMEOUT": "timeout",
    "PIPELINE_CONNECT_TIMEOUT": "connect_timeout",
    "PIPELINE_MAX_ATTEMPTS": "max_attempts",
    "PIPELINE_CHUNK_SIZE": "chunk_size",
    "PIPELINE_LEASE_SECONDS": "lease_seconds",
    "PIPELINE_MAX_RESPONSE_BYTES": "max_response_bytes",
    "PIPELINE_DRAIN_SECONDS": "drain_seconds",
    "PIPELINE_WRITE_STALL_SECONDS": "write_stall_seconds",
    "PIPELINE_BREAKER_FAILURES": "breaker_failures",
    "PIPELINE_BREAKER_SECONDS": "breaker_seconds",
    "PIPELINE_RPM": "rpm",
    "PIPELINE_TPM": "tpm",
    "PIPELINE_LIMITS_FILE": "limits_file",
    "PIPELINE_MAX_LINE_BYTES": "max_line_bytes",
    "PIPELINE_AUDIO_ROOTS": "audio_roots",
    "PIPELINE_PART_SIZE": "part_size",
    "PIPELINE_PART_BYTES": "part_bytes",
    "PIPELINE_BATCH_POLL_SECONDS": "batch_poll_seconds",
    "PIPELINE_PRICES_FILE": "prices_file",
    "PIPELINE_PROGRESS_SECONDS": "progress_seconds",
    "PIPELINE_METRICS_PORT": "metrics_port",
    "PIPELINE_METRICS_HOST": "metrics_host",
    "PIPELINE_ACCOUNTS_FILE": "accounts_file",
}

#: OpenAI's own variable names, read when the PIPELINE_ form is not set.
OPENAI_ENV = {
    "OPENAI_BASE_URL": "base_url",
    "OPENAI_ORG_ID": "organization",
    "OPENAI_PROJECT_ID": "project",
    "AZURE_OPENAI_ENDPOINT": "azure_endpoint",
    "OPENAI_API_VERSION": "api_version",
}

#: Environment variables kept in `Settings.secrets`: the names API keys go by.
_SECRET_NAME = re.compile(r"KEY|TOKEN")

#: The folder that marks a project's own data, found in the working directory or a parent (as git finds .git).
PROJECT_DATA_DIR = ".pipeline"


def find_data_dir(start: Path) -> tuple[Path, str]:
    """Where the data lives when neither --data-dir nor PIPELINE_DATA_DIR says: a `.pipeline/` in `start`
    or a parent, else the user's data directory (e.g. ~/.local/share/pipeline). And how it was found."""
    for folder in (start, *start.parents):
        if (folder / PROJECT_DATA_DIR).is_dir():
            return folder / PROJECT_DATA_DIR, f".pipeline/ found in {folder}"
    import platformdirs  # only when needed: most commands never get here in a project

    return Path(platformdirs.user_data_dir("pipeline", appauthor=False)), "the user data directory"


_TYPES = {f.name: f.type for f in fields(Settings)}


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in _TYPES or name in ("api_key", "data_dir_source", "secrets"):
            raise ConfigError(f"unknown setting {name!r}")
        value = _parse(name, str(_TYPES[name]), raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {raw!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"{name}: must be positive, got {raw!r}")
        out[name] = value
    for name in ("base_url", "azure_endpoint"):
        if name in out:
            out[name] = check_base_url(out[name])
    return out


def _parse(name: str, kind: str, raw: Any) -> Any:
    """One setting's value from the environment's text or from what a flag gave."""
    if name == "deployments":  # NAME=MODEL pairs, comma-separated in the environment
        return tuple(raw) if isinstance(raw, list | tuple) else tuple(str(raw).split(","))
    try:
        if "tuple" in kind:  # folders: os.pathsep-separated in the environment, a sequence from flags
            parts = raw.split(os.pathsep) if isinstance(raw, str) else raw
            return tuple(Path(p) for p in parts if str(p))
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.split(' |')[0]}, got {raw!r}") from None


def check_base_url(url: str) -> str:
    """The base URL without a trailing slash; ConfigError for one that cannot be an HTTP API or that carries
    credentials (they would end up in the database and the logs: the key belongs in OPENAI_API_KEY)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise ConfigError(f"base URL {mask_url(url)!r}: expected http(s)://host[:port]/path")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"base URL {mask_url(url)!r} carries credentials: remove user:password@ and put the API key in "
            "OPENAI_API_KEY (or the variable --api-key-env names)"
        )
    return url.rstrip("/")
