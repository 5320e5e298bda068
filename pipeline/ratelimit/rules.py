"""The rules both limiters follow: keys, given and learned limits, the rate-limit headers, the pacing.

`LocalLimiter` (local.py) paces one process, `RedisLimiter` (redis.py) every process sharing a Redis;
both follow the rules below, so they are interchangeable.

Limits are per `LimitKey`: requests per minute (RPM) and tokens per minute (TPM), each given by the
user (a `LimitTable`), learned from the `x-ratelimit-limit-*` headers, or unknown. When both are
known the lower one is in force. While neither limit is known and no answer with headers has been
seen, at most PROBE_IN_FLIGHT requests of the key are in flight: the first answers teach the limits.

Limits-file format (`LimitTable.from_file`): a JSON or TOML (by the `.toml` suffix) object mapping a
model name, or "*" for every other model, to `rpm` and/or `tpm` (positive integers; JSON null or
leaving the field out means "not given"). Unknown fields are an error.

    {"gpt-4o-mini": {"rpm": 5000, "tpm": 2000000}, "*": {"rpm": 500}}

    ["gpt-4o-mini"]
    rpm = 5000
    tpm = 2000000
    ["*"]
    rpm = 500
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from pipeline.errors import ConfigError

#: Fraction of a limit the limiters aim at. Servers count in short windows (6,000 RPM as 100 per second)
#: and requests reach them with some jitter: 1% slack (one request a second at 6,000 RPM) kept 429s
#: at 0-0.03% against the fake's 1-second buckets, where 0.5% slack let a few through. Probing and the
#: last answer's latency cost another ~1% of a one-minute run, which still ends above 97%.
MARGIN = 0.99
#: Burst capacity, in seconds of the (margined) rate. Small on purpose: a server counting in
#: 1-second buckets refuses a full second's burst that lands in a bucket which also gets the
#: steady flow; a quarter second still absorbs timer jitter and keeps the bucket from idling.
BURST_SECONDS = 0.25
#: Requests of a key allowed in flight while its limits are unknown and no answer has been seen.
PROBE_IN_FLIGHT = 4
#: A probe slot whose answer never came (a crashed process) is given back after this many seconds.
PROBE_TIMEOUT = 120.0
#: How often a sender waiting for the probes' answers looks again, in seconds.
PROBE_POLL = 0.05
#: Time constant, in seconds, of the moving average behind the send rates in `snapshot`.
RATE_WINDOW = 10.0
#: Shortest sleep between two tries, so that rounding never makes a sender spin.
MIN_SLEEP = 0.0005


@dataclass(frozen=True, slots=True)
class LimitKey:
    """Whose budget a request spends: limits are per base URL, API key, organization (and project), model."""

    base_url: str
    key_fingerprint: str
    organization: str | None
    model: str
    project: str | None = None

    def __str__(self) -> str:
        account = (self.organization or "-") + (f"/{self.project}" if self.project else "")
        return f"{self.base_url}|{self.key_fingerprint}|{account}|{self.model}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Requests and tokens per minute; None is "not given"."""

    rpm: int | None = None
    tpm: int | None = None


class LimitTable(Mapping[str, Limits]):
    """Given limits by model name; "*" applies to every model not named. Immutable."""

    def __init__(self, table: Mapping[str, Limits] | None = None) -> None:
        self._table = dict(table or {})

    def __getitem__(self, model: str) -> Limits:
        return self._table[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"LimitTable({self._table!r})"

    def for_model(self, model: str) -> Limits:
        """The limits given for `model`: its own entry, else "*", else none."""
        return self._table.get(model) or self._table.get("*") or Limits()

    def with_default(self, default: Limits) -> LimitTable:
        """A copy whose "*" entry takes the fields `default` sets (e.g. --rpm/--tpm over the file's)."""
        base = self._table.get("*", Limits())
        star = Limits(default.rpm or base.rpm, default.tpm or base.tpm)
        return LimitTable({**self._table, "*": star})

    @classmethod
    def from_dict(cls, data: object, source: str = "limits") -> LimitTable:
        """Validate `{"model": {"rpm": int, "tpm": int}, ...}` (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected an object mapping model names to limits")
        table: dict[str, Limits] = {}
        for model, entry in data.items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{source}: {model!r}: expected an object with rpm and/or tpm")
            unknown = sorted(set(entry) - {"rpm", "tpm"})
            if unknown:
                raise ConfigError(f"{source}: {model!r}: unknown field(s): {', '.join(unknown)}")
            table[str(model)] = Limits(
                _positive(entry.get("rpm"), f"{source}: {model!r}: rpm"),
                _positive(entry.get("tpm"), f"{source}: {model!r}: tpm"),
            )
        return cls(table)

    @classmethod
    def from_file(cls, path: str | Path) -> LimitTable:
        """Read a JSON file, or a TOML one when the name ends in `.toml`."""
        path = Path(path)
        is_toml = path.suffix.lower() == ".toml"
        try:
            text = path.read_text(encoding="utf-8")
            data: Any = tomllib.loads(text) if is_toml else json.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read limits file {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # JSONDecodeError and TOMLDecodeError both are
            raise ConfigError(f"{path}: not valid {'TOML' if is_toml else 'JSON'}: {exc}") from exc
        return cls.from_dict(data, str(path))


def _positive(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (`1s`, `6m0s`, `20ms`, `1h23m31s`); None when unparseable."""
    if not text:
        return None
    text = text.strip()
    found = _GO_DURATION.findall(text)
    if not found or "".join(n + u for n, u in found) != text:
        try:
            return float(text)
        except ValueError:
            return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in found)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What one answer's `x-ratelimit-*` headers say; None where a header is absent or unreadable."""

    #: The answer had any headers at all (a transport failure has none).
    seen: bool = False
    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    #: Seconds until the request / token budget is whole again.
    reset_requests: float | None = None
    reset_tokens: float | None = None

    def reset(self, kind: str | None = None) -> float | None:
        """Seconds until the `kind` budget (requests or tokens; the longer of both when None) is whole."""
        resets = {"requests": self.reset_requests, "tokens": self.reset_tokens}
        found = [v for k, v in resets.items() if v is not None and kind in (None, k)]
        return max(found) if found else None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders:
        """The one reader of `x-ratelimit-*` headers, for the limiters and for retry waits."""
        # aiohttp's headers are already case-insensitive; copying them per answer showed in profiles.
        found = headers if isinstance(headers, CIMultiDictProxy | CIMultiDict) else _lowered(headers)
        return cls(
            seen=bool(headers),
            limit_requests=_count(found.get("x-ratelimit-limit-requests")),
            limit_tokens=_count(found.get("x-ratelimit-limit-tokens")),
            remaining_requests=_count(found.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_count(found.get("x-ratelimit-remaining-tokens")),
            reset_requests=parse_duration(found.get("x-ratelimit-reset-requests")),
            reset_tokens=parse_duration(found.get("x-ratelimit-reset-tokens")),
        )


def _count(text: str | None) -> int | None:
    try:
        value = int(float(text)) if text is not None else None
    except ValueError:
        return None
    return value if value is None or value >= 0 else None


def in_force(given: int | None, learned: int | None) -> tuple[int | None, str | None]:
    """The limit that applies and where it comes from: the lower of given and learned."""
    if given is not None and (learned is None or given <= learned):
        return given, "given"
    if learned is not None:
        return learned, "learned"
    return None, None


def describe(
    key: LimitKey,
    given: Limits,
    learned: Limits,
    *,
    probing: bool,
    cooldown_until: float | None,
    sent_per_second: tuple[float, float],
    available: tuple[float | None, float | None],
) -> dict[str, Any]:
    """The `snapshot` dict both limiters return (times are Unix seconds, rates per minute).

    `available_requests` / `available_tokens`: what could be sent at once now (None without a limit);
    negative when earlier requests borrowed from the coming seconds.
    """
    rpm, rpm_source = in_force(given.rpm, learned.rpm)
    tpm, tpm_source = in_force(given.tpm, learned.tpm)
    return {
        "key": str(key),
        "rpm": rpm,
        "rpm_source": rpm_source,
        "tpm": tpm,
        "tpm_source": tpm_source,
        "given": {"rpm": given.rpm, "tpm": given.tpm},
        "learned": {"rpm": learned.rpm, "tpm": learned.tpm},
        "probing": probing,
        "cooldown_until": cooldown_until,
        "sent_rpm": round(sent_per_second[0] * 60.0, 1),
        "sent_tpm": round(sent_per_second[1] * 60.0, 1),
        "available_requests": None if available[0] is None else round(available[0], 3),
        "available_tokens": None if available[1] is None else round(available[1], 1),
    }


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}


@dataclass(frozen=True, slots=True)
class Pace:
    """How close to the limits to run: see MARGIN, BURST_SECONDS and PROBE_IN_FLIGHT.

    The arithmetic of a GCRA bucket kept as one number, `tat` (the time the bucket is full again); the Redis
    limiter's Lua scripts repeat it.
    """

    margin: float = MARGIN
    burst: float = BURST_SECONDS
    probe_in_flight: int = PROBE_IN_FLIGHT
    #: Give back the unused part of a reservation (False: only charge answers that used more).
    refund: bool = True

    def rate(self, limit: int) -> float:
        """Units per second aimed at for a per-minute `limit`."""
        return limit * self.margin / 60.0

    def wait(self, tat: float | None, now: float, cost: float, limit: int) -> float:
        """Seconds until `cost` fits the bucket (<= 0: it fits now)."""
        tat = now + self.burst if tat is None else tat
        return max(tat, now) - now - (self.burst - min(cost / self.rate(limit), self.burst))

    def charge(self, tat: float | None, now: float, cost: float, limit: int) -> float:
        """The bucket's `tat` after taking `cost` (clipped to one minute's worth)."""
        tat = now + self.burst if tat is None else tat
        return max(tat, now) + min(cost, limit) / self.rate(limit)

    def available(self, tat: float | None, now: float, limit: int | None) -> float | None:
        """What the bucket holds now (negative: borrowed from the coming seconds); None without a limit."""
        if limit is None:
            return None
        tat = now + self.burst if tat is None else tat
        return (self.burst - (max(tat, now) - now)) * self.rate(limit)

    def tighten(self, tat: float | None, now: float, limit: int, remaining: int, reset: float) -> float:
        """Empty the bucket enough that at most `remaining` go out in the next `reset` seconds."""
        tat = now + self.burst if tat is None else tat
        return max(tat, now + self.burst + reset - remaining / self.rate(limit))
