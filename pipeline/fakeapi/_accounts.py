"""The fake's accounts: several keys with limits of their own (and revoked at runtime), Azure OpenAI's
routes, headers and error bodies, and a server whose latency rises with load (a self-hosted model server).

- `keys` ({key: {"rpm", "tpm", "revoked"}}): only these keys are accepted; each has its own meters, so two
  keys of 3,000 and 6,000 RPM add up to 9,000. A revoked key gets 401 invalid_api_key.
- `azure`: the Azure routes answer (`/openai/deployments/{name}/...?api-version=`, `/openai/v1/...`,
  `/openai/responses?api-version=`); the key may come in `api-key` (as Azure's SDK sends it) or as a Bearer
  token. A deployment route without api-version (or with one `api_versions` does not list) is 404
  `{"code": "404", "message": "Resource not found"}`;
  a deployment `deployments` does not list (None: every name but "does-not-exist") is 404
  DeploymentNotFound; on the v1 and resource routes the deployment is the body's `model`. Azure answers
  carry `x-ratelimit-remaining-*` but no limit or reset headers, and its 429 says "Please retry after N
  seconds" with `retry-after-ms` and `retry-after`.
- `capacity` / `queue_limit`: a successful answer takes `latency x max(1, in flight / capacity)` seconds, and
  a request arriving with more than `queue_limit` in flight gets 503 at once (as vLLM's and TGI's queues do).

Every answer to /v1 and the Azure routes is logged (`RequestLog`: monotonic time, key label, status) for
tests that measure rates from what the server saw.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from ._config import FakeConfig
from ._limits import RateLimiter
from ._protocol import MISSING_MODEL, ApiError, mask_key

#: Requests kept in the request log (the oldest are dropped).
LOG_SIZE = 500_000
#: Azure's answer to a route it does not know (a deployment route without api-version).
RESOURCE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
#: Headers Azure does not send (it sends only x-ratelimit-remaining-*).
_NOT_AZURE = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")
_NOT_AZURE_PREFIX = "x-ratelimit-reset-"


class RequestLog:
    """(time.monotonic(), key label, status) of every answered request, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[float, str, int]] = deque(maxlen=LOG_SIZE)

    def add(self, at: float, key: str, status: int) -> None:
        with self._lock:
            self._entries.append((at, key, status))

    def snapshot(self) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self._entries)

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()


class KeyMeters:
    """One RateLimiter per key of `keys`, with that key's limits."""

    def __init__(self) -> None:
        self._limiters: dict[str, RateLimiter] = {}

    def reset(self) -> None:
        for limiter in self._limiters.values():
            limiter.reset()

    def limiter(self, key: str) -> RateLimiter:
        found = self._limiters.get(key)
        if found is None:
            found = self._limiters[key] = RateLimiter()
        return found


def key_config(config: FakeConfig, key: str) -> FakeConfig:
    """The config as one key of `keys` sees it: its own rpm and tpm."""
    spec = (config.keys or {}).get(key, {})
    view = FakeConfig.__new__(FakeConfig)
    view.__dict__.update(config.__dict__)
    view.rpm, view.tpm = spec.get("rpm"), spec.get("tpm")
    return view


def request_key(headers: Mapping[str, str], azure_route: bool) -> tuple[str | None, str]:
    """The key a request carries (on an Azure route "api-key" first, as Azure's SDK sends it; else a
    Bearer token) and the scheme it came in ("api-key", "bearer" or "" when absent or malformed)."""
    azure = headers.get("api-key") if azure_route else None
    if azure:
        return azure.strip(), "api-key"
    scheme, _, key = (headers.get("Authorization") or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None, ""
    return key, "bearer"


def check_key(config: FakeConfig, key: str) -> None:
    """401 for a key `keys` does not list or marks revoked."""
    spec = (config.keys or {}).get(key)
    if spec is None or spec.get("revoked"):
        raise ApiError(
            401,
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def key_label(config: FakeConfig, key: str | None) -> str:
    """How the log and the stats name a key: its name in `keys` (never the key itself)."""
    if key is None:
        return "-"
    names = (config.keys or {}).get(key, {})
    return str(names.get("name") or mask_key(key))


class AzureError(ApiError):
    """An error in Azure's body shape: `{"error": {"code", "message"}}`."""

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def check_azure_route(config: FakeConfig, request: web.Request, kind: str) -> None:
    """Before reading the body: Azure mode, api-version and the path's deployment."""
    if not config.azure:
        raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
    version = request.query.get("api-version")
    served = config.api_versions
    if kind != "v1" and (not version or (served is not None and version not in served)):
        raise AzureError(404, "Resource not found", code="404")
    deployment = request.match_info.get("deployment")
    if deployment is not None:
        check_deployment(config, deployment)


def check_deployment(config: FakeConfig, name: str) -> None:
    if name == MISSING_MODEL or (config.deployments is not None and name not in config.deployments):
        raise AzureError(
            404,
            "The API deployment for this resource does not exist. If you created the deployment within the "
            "last 5 minutes, please wait a moment and try again.",
            code="DeploymentNotFound",
        )


def azure_answer(response: web.Response, api_version: str | None) -> None:
    """Make an answer look like Azure's: no limit or reset headers; a 429 in Azure's words."""
    for name in list(response.headers):
        lower = name.lower()
        if lower in _NOT_AZURE or lower.startswith(_NOT_AZURE_PREFIX):
            del response.headers[name]
    if response.status != 429 or "insufficient_quota" in (response.text or ""):
        return
    wait_ms = int(response.headers.get("retry-after-ms", "1000"))
    seconds = max(1, -(-wait_ms // 1000))
    version = api_version or "v1"
    message = (
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {version} have "
        "exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after "
        f"{seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further "
        "increase the default rate limit."
    )
    response.body = orjson.dumps({"error": {"code": "429", "message": message}})
