"""make_app: the routes, and the checks every /v1 request passes in order.

(Azure routes: api-version, deployment) -> auth -> full queue (503) -> hang / 5xx injection -> quota ->
rate limit (the key's own, with `keys`) -> validation -> directive -> latency (x load / capacity) -> answer.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import hdrs, web

from ._accounts import (
    KeyMeters,
    RequestLog,
    azure_answer,
    check_azure_route,
    check_deployment,
    check_key,
    key_config,
    key_label,
    request_key,
)
from ._audio import plan_audio
from ._batches import BatchStore
from ._chat import plan_chat, plan_completion
from ._config import FakeConfig, config_view, update_config
from ._embeddings import plan_embeddings
from ._files import FileStore
from ._limits import Quota, RateLimiter
from ._moderations import plan_moderations
from ._plan import Plan
from ._protocol import NO_KEY_MESSAGE, ORGANIZATION, Answer, ApiError, fingerprint_bytes, mask_key
from ._responses import plan_responses
from ._stats import Stats

#: Largest JSON body read (audio uploads are streamed and not bound by it).
JSON_BODY_LIMIT = 64 * 1024 * 1024

#: The fingerprint recorded for a JSON body too large to read.
UNREAD_BODY = "unread"

#: Reads a request into its plan, given the models that exist (None: any model).
Reader = Callable[[web.Request, Sequence[str] | None], Awaitable[Plan]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeState:
    """Everything one fake server remembers between requests."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.limiter = RateLimiter()
        self.quota = Quota()
        self.random = random.Random(config.seed)
        self.files = FileStore(self.stats)
        self.batches = BatchStore(config, self.stats, self.random, self.files, _respond)
        self.meters = KeyMeters()
        self.log = RequestLog()

    def reset(self) -> None:
        """Zero the stats, the quota count, the rate-limit meters and the request log."""
        self.stats.reset()
        self.quota.reset()
        self.limiter.reset()
        self.meters.reset()
        self.log.reset()


STATE = web.AppKey("fakeapi_state", FakeState)


def make_app(config: FakeConfig | None = None) -> web.Application:
    """The fake OpenAI API as an aiohttp application, driven by `config` (kept by reference, not copied)."""
    app = web.Application(client_max_size=JSON_BODY_LIMIT)
    app[STATE] = FakeState(config if config is not None else FakeConfig())
    routes: dict[str, Reader] = {
        "/v1/chat/completions": _json_reader(plan_chat),
        "/v1/completions": _json_reader(plan_completion),
        "/v1/audio/transcriptions": lambda request, models: plan_audio(request, "transcribe", models),
        "/v1/audio/translations": lambda request, models: plan_audio(request, "translate", models),
        "/v1/embeddings": _json_reader(plan_embeddings),
        "/v1/responses": _json_reader(plan_responses),
        "/v1/moderations": _json_reader(plan_moderations),
    }
    for path, reader in routes.items():
        app.router.add_post(path, _v1_handler(reader))
        tail = path.removeprefix("/v1")
        app.router.add_post("/openai/v1" + tail, _v1_handler(reader, "v1"))
        app.router.add_post("/openai/deployments/{deployment}" + tail, _v1_handler(reader, "deployment"))
        if tail == "/responses":  # Azure serves it by the resource, the deployment in `model`
            app.router.add_post("/openai" + tail, _v1_handler(reader, "resource"))
    _add_batch_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", _v1_handler(_read_unknown))
    app.router.add_get("/_fake/stats", _get_stats)
    app.router.add_get("/_fake/log", _get_log)
    app.router.add_get("/_fake/config", _get_config)
    app.router.add_post("/_fake/config", _post_config)
    app.router.add_post("/_fake/reset", _post_reset)
    return app


#: The Batch API's routes: method, path, operation name (stats, `batch_delays`), handler.
_BATCH_ROUTES: tuple[
    tuple[str, str, str, Callable[[FakeState, web.Request], Awaitable[web.Response]]], ...
] = (
    ("POST", "/v1/files", "upload", lambda state, request: state.files.upload(request)),
    ("GET", "/v1/files", "list_files", lambda state, request: state.files.listing(request)),
    ("GET", "/v1/files/{id}", "retrieve_file", lambda state, request: state.files.retrieve(request)),
    ("GET", "/v1/files/{id}/content", "file_content", lambda state, request: state.files.content(request)),
    ("DELETE", "/v1/files/{id}", "delete_file", lambda state, request: state.files.delete(request)),
    ("POST", "/v1/batches", "create", lambda state, request: state.batches.create(request)),
    ("GET", "/v1/batches", "list", lambda state, request: state.batches.listing(request)),
    ("GET", "/v1/batches/{id}", "retrieve", lambda state, request: state.batches.retrieve(request)),
    ("POST", "/v1/batches/{id}/cancel", "cancel", lambda state, request: state.batches.cancel_batch(request)),
)


def _add_batch_routes(app: web.Application) -> None:
    """The Batch API: auth, then the operation, then its configured delay; no quota or rate limits."""
    for method, path, operation, action in _BATCH_ROUTES:
        app.router.add_route(method, path, _batch_handler(operation, action))


def _batch_handler(
    operation: str, action: Callable[[FakeState, web.Request], Awaitable[web.Response]]
) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.stats.batch_call(operation)
        try:
            _check_auth(state.config, request.headers.get(hdrs.AUTHORIZATION))
            response = await action(state, request)
        except ApiError as error:
            response = error.response()
        delay = (state.config.batch_delays or {}).get(operation, 0.0)
        if delay > 0:  # done, but not yet answered: a client killed now never learns what it made
            await asyncio.sleep(delay)
        response.headers.setdefault("x-request-id", f"req_{secrets.token_hex(16)}")
        return response

    return handle


def state_of(app: web.Application) -> FakeState:
    return app[STATE]


def _json_reader(plan: Callable[[bytes, Sequence[str] | None], Plan]) -> Reader:
    async def read(request: web.Request, models: Sequence[str] | None) -> Plan:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            message = f"Maximum content size limit ({JSON_BODY_LIMIT}) exceeded"
            return Plan.failing(UNREAD_BODY, ApiError(413, message, type="server_error"))
        return plan(raw, models)

    return read


async def _read_unknown(request: web.Request, models: Sequence[str] | None) -> Plan:
    raw = await request.read()
    error = ApiError(404, f"Invalid URL ({request.method} {request.path})")
    return Plan.failing(fingerprint_bytes(raw), error, metered=False)


def _v1_handler(reader: Reader, azure: str | None = None) -> Handler:
    """The handler of one route; `azure` names an Azure route's kind (deployment, v1, resource)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        started = time.monotonic()
        key, _ = request_key(request.headers, azure is not None)
        label = key_label(state.config, key) if state.config.keys else None
        state.stats.enter(request.headers.get("OpenAI-Project"), label)
        try:
            if azure is not None:
                try:
                    check_azure_route(state.config, request, azure)
                except ApiError as error:
                    response = error.response()
                    state.log.add(time.monotonic(), label or "-", response.status)
                    return response
            plan = await reader(request, None if azure else state.config.models)
            receipt = state.stats.receive(plan.fingerprint)
            tokens = None
            try:
                if azure in ("v1", "resource"):
                    check_deployment(state.config, plan.model)
                answer = await _pass_checks(state, request, plan, receipt, key)
                charset = "utf-8" if answer.content_type.startswith("text/") else None
                response = web.Response(
                    body=answer.body,
                    content_type=answer.content_type,
                    charset=charset,
                    headers=answer.headers,
                )
                tokens = answer.tokens
            except ApiError as error:
                if state.config.quote_key:
                    _quote_key(error, request.headers.get(hdrs.AUTHORIZATION))
                response = error.response()
            _stamp(response, state, started, key)
            if azure is not None:
                azure_answer(response, request.query.get("api-version"))
            state.stats.answer(plan.fingerprint, response.status, tokens, label)
            state.log.add(time.monotonic(), label or "-", response.status)
            return response
        finally:
            state.stats.leave(label)

    return handle


async def _pass_checks(
    state: FakeState, request: web.Request, plan: Plan, receipt: int, key: str | None
) -> Answer:
    """The answer to the `receipt`-th receipt (from 1) of the plan's body, or the ApiError it gets."""
    config = state.config
    _check_key(config, key)
    if not plan.metered:
        return plan.respond(None)
    if config.queue_limit is not None and state.stats.in_flight > config.queue_limit:
        raise ApiError(503, _SERVER_ERRORS[503], type="server_error")
    await _inject_faults(state)
    state.quota.take(config)
    succeeded = False
    try:
        if config.keys and key is not None:
            state.meters.limiter(key).admit(key_config(config, key), plan.model, plan.tokens)
        else:
            state.limiter.admit(config, plan.model, plan.tokens)
        answer = await _respond(plan, receipt)
        delay = config.latency
        if config.latency_jitter:
            delay += state.random.uniform(-config.latency_jitter, config.latency_jitter)
        if config.capacity is not None:  # a server whose latency rises with load
            delay *= max(1.0, state.stats.in_flight / config.capacity)
        if delay > 0:
            await asyncio.sleep(delay)
        succeeded = True
    finally:
        state.quota.settle(succeeded)
    return answer


async def _respond(plan: Plan, receipt: int) -> Answer:
    """Validate the request and answer it, as its directive says while that is in force."""
    directive = plan.directive
    if directive is None or not directive.in_force(receipt):
        return plan.respond(None)
    return await directive.shape(plan.respond(directive))


def _check_auth(config: FakeConfig, header: str | None) -> None:
    """The Batch API's auth: a Bearer key (the configured one when set)."""
    key, _ = request_key({hdrs.AUTHORIZATION: header or ""}, False)
    _check_key(config, key)


def _check_key(config: FakeConfig, key: str | None) -> None:
    if key is None:
        raise ApiError(401, NO_KEY_MESSAGE)
    if config.keys is not None:
        check_key(config, key)
        return
    if config.api_key is not None and not hmac.compare_digest(key.encode(), config.api_key.encode()):
        raise ApiError(
            401,
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _quote_key(error: ApiError, header: str | None) -> None:
    """Make the error's message quote the request's key whole and masked (FakeConfig.quote_key)."""
    key = (header or "").partition(" ")[2].strip()
    if key:
        error.message += f" (your key: {key}; masked: {mask_key(key)})"


#: Injected server errors, and how often each status is picked.
_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}
_SERVER_ERROR_WEIGHTS = (500, 500, 502, 503)


async def _inject_faults(state: FakeState) -> None:
    """Hang, then maybe fail, as often as the config says. Disabled faults draw no random numbers."""
    config = state.config
    if config.hang_rate > 0 and state.random.random() < config.hang_rate:
        await asyncio.sleep(config.hang_seconds)
    if config.error_rate > 0 and state.random.random() < config.error_rate:
        status = config.error_status or state.random.choice(_SERVER_ERROR_WEIGHTS)
        message = _SERVER_ERRORS.get(status, _SERVER_ERRORS[500])
        headers = {"Retry-After": f"{config.retry_after:g}"} if config.retry_after is not None else None
        raise ApiError(status, message, type="server_error", headers=headers)


def _stamp(response: web.Response, state: FakeState, started: float, key: str | None = None) -> None:
    """Headers every /v1 answer carries.

    A 429 keeps the rate-limit headers it was refused with, and a directed answer its x-request-id.
    """
    response.headers.setdefault("x-request-id", f"req_{secrets.token_hex(16)}")
    response.headers["openai-organization"] = ORGANIZATION
    response.headers["openai-version"] = "2020-10-01"
    response.headers["openai-processing-ms"] = str(round((time.monotonic() - started) * 1000))
    config = state.config
    if config.keys and key is not None and key in config.keys:
        headers = state.meters.limiter(key).headers(key_config(config, key))
    else:
        headers = state.limiter.headers(config)
    for name, value in headers.items():
        response.headers.setdefault(name, value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _get_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats.snapshot())


async def _get_log(request: web.Request) -> web.Response:
    """Every answered request: [monotonic seconds, key label, status], oldest first."""
    return _json(request.app[STATE].log.snapshot())


async def _get_config(request: web.Request) -> web.Response:
    return _json(config_view(request.app[STATE].config))


async def _post_config(request: web.Request) -> web.Response:
    """Update config fields from a JSON object; 400 (and no change) on unknown fields or bad values."""
    state = request.app[STATE]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of config fields")
        update_config(state.config, changes)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        return _json(ApiError(400, str(exc)).body(), status=400)
    if "seed" in changes:
        state.random.seed(state.config.seed)
    return _json(config_view(state.config))


async def _post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return _json(state.stats.snapshot())
