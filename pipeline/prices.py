"""What requests cost: a dated price table shipped with the package (prices.json), kept current by
`pipeline prices update` (a dated copy in the data directory, price_sources.py), or the user's own.

The table in force (`load_prices`): the shipped one (the offline fallback), under the refreshed one in
the data directory (REFRESHED_FILE) when there is one, under `--prices FILE` when given; each adds models
and replaces the ones it names. Its `as_of`, `source` and `origin` (shipped, refreshed, file) are those of
the top layer, and `status` shows them.

Prices are USD per 1M tokens: `input`, `cached_input` (prompt tokens served from the cache; the input
price when absent) and `output`; or `per_minute` of audio (whisper-1, billed per second). Token-billed
transcription models (gpt-4o-transcribe) count their audio as input tokens, at the audio input price.

A model is looked up by its alias when the table has one (`with_aliases`: e.g. an Azure deployment name ->
its model), then by its exact name, then without a date suffix (`gpt-4o-mini-2024-07-18`, `gpt-4-0613` ->
`gpt-4o-mini`, `gpt-4`); a model found no way is unpriced: its cost is unknown, never silently zero.

A `--prices FILE` (JSON, or TOML by the `.toml` suffix) has the same shape as prices.json, `{"models":
{name: {...}}}` (`as_of` and `source` optional); its models replace or add to the ones below it.

Attempts sent through the Batch API (tier "batch-api") cost BATCH_API_SHARE of the direct price.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.settings import Settings

#: Share of the direct price the Batch API charges.
BATCH_API_SHARE = 0.5
#: The tier of attempts sent through the Batch API.
BATCH_API_TIER = "batch-api"
#: Tokens per unit of price.
PER_TOKENS = 1_000_000
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_FIELDS = frozenset({"input", "cached_input", "output", "per_minute"})
#: The refreshed table `pipeline prices update` writes into the data directory.
REFRESHED_FILE = "prices.json"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input, cached input and output tokens, or per minute of audio."""

    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0
    per_minute: float | None = None

    def cost(self, prompt: int, cached: int, completion: int, audio_seconds: float = 0.0) -> float:
        """USD for these tokens (cached ones are part of `prompt`) and, when billed so, audio seconds."""
        cached = min(cached, prompt)
        cached_price = self.input if self.cached_input is None else self.cached_input
        tokens = (prompt - cached) * self.input + cached * cached_price + completion * self.output
        minutes = audio_seconds / 60 * self.per_minute if self.per_minute is not None else 0.0
        return tokens / PER_TOKENS + minutes


@dataclass(frozen=True)
class PriceTable:
    """Prices by model, with the date they were taken, where from, and which layer that is (`origin`:
    shipped, refreshed or file)."""

    models: dict[str, Price]
    as_of: str = ""
    source: str = ""
    origin: str = "shipped"
    #: other names of models (an Azure deployment -> its model), looked up first
    aliases: Mapping[str, str] = field(default_factory=dict)

    def price(self, model: str) -> Price | None:
        """The model's price: through its alias if any, by exact name, else without a date suffix; None when
        unpriced."""
        name = self.aliases.get(model, model)
        found = self.models.get(name)
        if found is None:
            found = self.models.get(base_model(name))
        return found

    def with_aliases(self, aliases: Mapping[str, str]) -> PriceTable:
        """This table, pricing each alias (e.g. a deployment name) as the model it names."""
        return replace(self, aliases={**self.aliases, **aliases})

    def unpriced(self, models: Iterable[str]) -> list[str]:
        """Those of `models` without a price, sorted."""
        return sorted({m for m in models if self.price(m) is None})

    def cost(
        self,
        model: str,
        tier: str,
        prompt: int,
        cached: int,
        completion: int,
        audio_seconds: float = 0.0,
    ) -> float | None:
        """USD for one model's usage sent through `tier`; None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        share = BATCH_API_SHARE if tier == BATCH_API_TIER else 1.0
        return price.cost(prompt, cached, completion, audio_seconds) * share

    def with_file(self, path: Path, origin: str = "file") -> PriceTable:
        """This table with the models of a prices file over it (ConfigError when it cannot be used)."""
        data = _read(path)
        models = dict(self.models)
        models.update(_models(data.get("models"), str(path)))
        as_of, source = str(data.get("as_of") or self.as_of), str(data.get("source") or path)
        return PriceTable(models, as_of, source, origin, self.aliases)


def base_model(model: str) -> str:
    """The model's name without a date suffix: `gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`."""
    return _DATE_SUFFIX.sub("", model)


@cache
def shipped() -> PriceTable:
    """The table shipped in the package."""
    data = json.loads(resources.files("pipeline").joinpath("prices.json").read_text())
    return PriceTable(_models(data["models"], "prices.json"), data["as_of"], data["source"])


def load_prices(settings: Settings) -> PriceTable:
    """The table in force: the shipped one, the refreshed one of the data directory over it (`pipeline
    prices update`), the models of --prices / PIPELINE_PRICES_FILE over both."""
    table = shipped()
    refreshed = refreshed_path(settings.data_dir)
    if refreshed.is_file():
        table = table.with_file(refreshed, "refreshed")
    return table.with_file(settings.prices_file) if settings.prices_file is not None else table


def refreshed_path(data_dir: Path) -> Path:
    """Where `pipeline prices update` keeps the refreshed table."""
    return data_dir / REFRESHED_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"prices file {path}: {exc.strerror or exc}") from None
    try:
        data = _toml(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is one
        raise ConfigError(f"prices file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"prices file {path}: expected an object with `models`")
    unknown = sorted(set(data) - {"models", "as_of", "source"})
    if unknown:
        raise ConfigError(f"prices file {path}: unknown key(s) {', '.join(unknown)}")
    return data


def check_table(data: Any, where: str) -> dict[str, Price]:
    """The models of a price table in prices.json's shape (ConfigError naming `where` if it is not)."""
    if not isinstance(data, dict):
        raise ConfigError(f"prices file {where}: expected an object with `models`")
    return _models(data.get("models"), where)


def _models(raw: Any, where: str) -> dict[str, Price]:
    if not isinstance(raw, dict):
        raise ConfigError(f"prices file {where}: `models` must map model names to prices")
    models: dict[str, Price] = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict) or not fields or not set(fields) <= _FIELDS:
            raise ConfigError(
                f"prices file {where}: {name}: expected some of {', '.join(sorted(_FIELDS))} (USD)"
            )
        values = {}
        for key, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"prices file {where}: {name}.{key}: expected a number >= 0")
            values[key] = float(value)
        models[str(name)] = Price(**values)
    return models


def _toml(text: str) -> Any:
    import tomllib  # only for a TOML prices file: `status` and the other short commands start faster

    return tomllib.loads(text)
