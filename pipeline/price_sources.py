"""Where a current price table comes from: `pipeline prices update [--from URL|FILE]`.

- Without `--from`: genai-prices (pydantic's maintained price data, the `pipeline-bulk[prices]` extra),
  read from the installed package, offline; `pip install -U genai-prices` brings newer prices.
- `--from URL` (http, https, file) or a path: a JSON document, either a table in prices.json's shape
  (`{"as_of", "source", "models": {...}}`, e.g. a team's own, served from anywhere) or genai-prices' data
  (its `data.json`: a list of providers), so its published file refreshes prices without the library.

Either becomes one table in prices.json's shape, dated, written atomically to the data directory
(prices.REFRESHED_FILE), where `load_prices` puts it over the shipped table.

From genai-prices' OpenAI provider: each model under its id and every exact name its match lists (`equals`,
within `or`); the prices in force today (of conditional prices, the latest started; time-of-day discounts
left out); a tiered price at its base tier; `input_mtok`, `cache_read_mtok`, `output_mtok` as input,
cached input and output per 1M tokens; audio by the hour as `per_minute`; a transcription model's input
at its audio input price (its prompt is the clip). Models with none of those prices are left out.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.prices import check_table, refreshed_path

#: The genai-prices provider whose models are taken.
PROVIDER = "openai"
#: Seconds to wait for a price file over HTTP.
FETCH_TIMEOUT = 30
#: Largest price document read (genai-prices' whole data.json is a few MB).
MAX_BYTES = 64 * 1024 * 1024


def update(data_dir: Path, source: str | None = None, today: datetime.date | None = None) -> dict[str, Any]:
    """Fetch a table from `source` (None: the installed genai-prices) and write it, dated, to the data
    directory; returns the table written. ConfigError when the source cannot be read or used."""
    today = today or datetime.date.today()
    if source is None:
        table = from_genai_prices_package(today)
    else:
        table = from_document(_fetch(source), source, today)
    check_table(table, source or "genai-prices")
    path = refreshed_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".prices-", delete=False) as out:
        json.dump(table, out, indent=1, sort_keys=True)
    os.replace(out.name, path)
    return table


def from_genai_prices_package(today: datetime.date) -> dict[str, Any]:
    """The OpenAI models of the installed genai-prices, as a table."""
    try:
        from genai_prices import __version__, data
    except ImportError:
        raise ConfigError(
            "prices update needs genai-prices: pip install 'pipeline-bulk[prices]' "
            "(or pass --from URL with a price file)"
        ) from None
    providers = [_plain(p) for p in data.providers if p.id == PROVIDER]
    source = f"genai-prices {__version__} (pydantic/genai-prices), provider {PROVIDER}"
    return {"as_of": today.isoformat(), "source": source, "models": _openai_models(providers, today)}


def from_document(document: Any, source: str, today: datetime.date) -> dict[str, Any]:
    """A fetched document as a table: prices.json's shape as it is, genai-prices' data converted."""
    if isinstance(document, dict) and "models" in document:
        return {
            "as_of": str(document.get("as_of") or today.isoformat()),
            "source": str(document.get("source") or source),
            "models": document["models"],
        }
    if isinstance(document, list):
        providers = [p for p in document if isinstance(p, dict) and p.get("id") == PROVIDER]
        if providers:
            models = _openai_models(providers, today)
            return {
                "as_of": today.isoformat(),
                "source": f"genai-prices data from {source}",
                "models": models,
            }
    raise ConfigError(
        f"prices from {source}: neither a price table ({{'models': ...}}) nor genai-prices data"
    )


def _fetch(source: str) -> Any:
    url = source if "://" in source else Path(source).resolve().as_uri()
    if not url.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"prices from {source}: expected an http(s) URL or a file")
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
            body = answer.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the answer's connection
        raise ConfigError(f"prices from {source}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"prices from {source}: {getattr(exc, 'reason', None) or exc}") from None
    if len(body) > MAX_BYTES:
        raise ConfigError(f"prices from {source}: larger than {MAX_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"prices from {source}: not JSON ({exc})") from None


def _openai_models(providers: list[dict[str, Any]], today: datetime.date) -> dict[str, dict[str, float]]:
    models: dict[str, dict[str, float]] = {}
    for provider in providers:
        for model in provider.get("models") or []:
            price = _price(str(model.get("id", "")), _in_force(model.get("prices"), today))
            if price:
                for name in _names(model):
                    models[name] = price
    return models


def _names(model: dict[str, Any]) -> list[str]:
    names = [str(model["id"])]
    pending = [model.get("match") or {}]
    while pending:
        clause = pending.pop()
        if isinstance(clause, dict):
            if isinstance(clause.get("equals"), str):
                names.append(clause["equals"])
            pending.extend(clause.get("or") or [])
    return list(dict.fromkeys(names))


def _in_force(prices: Any, today: datetime.date) -> dict[str, Any]:
    """The model's prices today: a plain set, or of conditional ones the latest started by date."""
    if isinstance(prices, dict):
        return prices
    best: tuple[str, dict[str, Any]] | None = None
    for entry in prices or []:
        constraint = entry.get("constraint") or {}
        if "start_time" in constraint:  # a time-of-day discount, not the standard price
            continue
        start = str(constraint.get("start_date") or "")
        if start <= today.isoformat() and (best is None or start >= best[0]):
            best = (start, entry.get("prices") or {})
    return best[1] if best else {}


def _price(model_id: str, prices: dict[str, Any]) -> dict[str, float]:
    def value(key: str) -> float | None:
        raw = prices.get(key)
        raw = raw.get("base") if isinstance(raw, dict) else raw
        return float(raw) if isinstance(raw, int | float | str) else None

    price: dict[str, float] = {}
    audio_input = value("input_audio_mtok") if "transcribe" in model_id else None
    for field, key in (
        ("input", "input_mtok"),
        ("cached_input", "cache_read_mtok"),
        ("output", "output_mtok"),
    ):
        found = audio_input if field == "input" and audio_input is not None else value(key)
        if found is not None:
            price[field] = found
    hours = value("audio_hours") or value("input_audio_hours")
    if hours is not None and not price:
        price["per_minute"] = hours / 60
    return price


def _plain(value: Any) -> Any:
    """genai-prices' objects (dataclasses, Decimals, dates) as the plain JSON its data.json has."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    else:
        items = vars(value)
    return {
        str(k).rstrip("_"): _plain(v) for k, v in items.items() if v is not None and not k.startswith("_")
    }
